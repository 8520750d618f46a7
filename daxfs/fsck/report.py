"""What a repair says: one line per fix, what became of each inode, and the
summary `daxfs check --repair` ends with.

Every phase reports through a `Report`:

* `fix(line)`: one thing repaired (printed as "repaired: LINE");
* `guessed(ino, ...)`: an inode whose record was lost and which repair
  made again from what the image still knows of it (its data, its names,
  its entries, its attributes): the line names every attribute that is a
  guess ("attributes guessed: size from its extents, mode 0600, ...");
* `partial(ino, why)`: an inode whose record survived but which lost part
  of what it held (data blocks, extended attributes);
* `lost(ino, why)`: an inode the image knew of that could not be made again.

`summary(final_inodes)` is the closing line: inodes recovered exactly,
recreated with guessed attributes, kept with losses, lost.  Nothing here
reads or writes the image.
"""

import logging

log = logging.getLogger(__name__)


def show(name: bytes) -> str:
    """A name for a message line: undecodable bytes and control characters
    escaped, so that every line stays one line."""
    text = name.decode(errors="backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class Report:
    def __init__(self):
        self.lines: list[str] = []
        self.guesses: dict[int, str] = {}       # ino -> what was guessed
        self.losses: dict[int, list[str]] = {}  # ino (kept) -> what it lost
        self.gone: dict[int, str] = {}          # ino -> why it could not be made again
        self.moved: set[int] = set()            # inodes put in /lost+found
        self.fresh: set[int] = set()            # inodes repair made for itself (/lost+found)

    def fix(self, line: str) -> None:
        self.lines.append(line)
        log.info("repaired: %s", line)

    def guessed(self, ino: int, where: str, what: str, guesses: list[str]) -> None:
        self.guesses[ino] = ", ".join(guesses)
        self.fix(f"{where}: its inode record was lost; recreated as {what},"
                 f" attributes guessed: {', '.join(guesses)}")

    def partial(self, ino: int, why: str) -> None:
        self.losses.setdefault(ino, []).append(why)

    def lost(self, ino: int, why: str) -> None:
        self.gone.setdefault(ino, why)

    def summary(self, final_inodes) -> str:
        final = set(final_inodes) - self.fresh
        guessed = final & set(self.guesses)
        partial = (final & set(self.losses)) - guessed
        exact = final - guessed - partial
        lost = set(self.gone) - final
        moved = len(exact & self.moved)
        text = f"{len(exact)} inode(s) recovered exactly"
        if moved:
            text += f" ({moved} of them now in /lost+found)"
        text += f", {len(guessed)} recreated with guessed attributes"
        if partial:
            text += f", {len(partial)} kept with losses"
        return text + f", {len(lost)} lost"
