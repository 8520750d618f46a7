"""Child side of the crash tests: a mixed workload on the engine that
records, after every fsync, what each tracked file must hold from then on.

usage: crash_workload.py IMAGE SEED MODE JOURNAL   (MODE: shared | private)

Tracked files are append-only (appends CoW the shared last block after a
clone); clones of them are never written again.  Scratch files, directories,
renames, truncates, xattrs and dedupes churn the metadata in between.
"""

import hashlib
import os
import random
import stat
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from daxfs.engine.errors import DaxfsError, NoSpace  # noqa: E402
from daxfs.engine.fs import Filesystem  # noqa: E402


def _remove_tree(fs, parent: int, name: bytes) -> None:
    ino = fs.lookup(parent, name).ino
    for e in list(fs.readdir(ino)):
        if e.name in (b".", b".."):
            continue
        if stat.S_ISDIR(e.attr.mode):
            _remove_tree(fs, ino, e.name)
        else:
            fs.unlink(ino, e.name)
    fs.rmdir(parent, name)


def _own_dir(fs, name: bytes) -> int:
    """This run's directory; on a device filled by earlier runs, their
    directories go first, oldest first (only this run is verified)."""
    while True:
        try:
            return fs.mkdir(1, name, 0o755, 0, 0).ino
        except NoSpace:
            old = [e.name for e in fs.readdir(1) if e.name not in (b".", b"..")]
            if not old:
                raise
            _remove_tree(fs, 1, old[0])
            fs.commit()


def main():
    image, seed, mode, journal = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    rnd = random.Random(seed)
    fs = Filesystem.open(image, private=(mode == "private"))
    jf = open(journal, "a")
    tag = f"s{seed}"
    d = _own_dir(fs, tag.encode())
    tracked: dict[bytes, bytearray] = {}
    inos: dict[bytes, int] = {}
    nfsync = 0
    for step in range(100000):
        r = rnd.random()
        try:
            if r < 0.35:
                name = b"t%d" % rnd.randrange(4)
                if name not in tracked:
                    inos[name] = fs.mknod(d, name, stat.S_IFREG | 0o644, 0, 0).ino
                    tracked[name] = bytearray()
                n = rnd.choice([1, 100, 4096, 5000, 20000])
                data = os.urandom(n)
                # a full device gives a short write (as write(2) does)
                done = fs.write(inos[name], len(tracked[name]), data)
                tracked[name] += data[:done]
            elif r < 0.45 and tracked:
                src = rnd.choice(sorted(tracked))
                name = b"c%d" % step
                ino = fs.mknod(d, name, stat.S_IFREG | 0o644, 0, 0).ino
                fs.clone_range(inos[src], 0, ino, 0, 0)
                tracked[name] = bytearray(tracked[src])
                inos[name] = ino
            elif r < 0.55:
                fs.fsync(0)
                nfsync += 1
                lines = [f"BEGIN {nfsync}\n"]
                for name, content in tracked.items():
                    lines.append(f"{tag}/{name.decode()} {len(content)} "
                                 f"{hashlib.sha256(content).hexdigest()}\n")
                lines.append(f"END {nfsync}\n")
                jf.write("".join(lines))
                jf.flush()
                os.fsync(jf.fileno())
            elif r < 0.65:
                name = b"x%d" % rnd.randrange(6)
                try:
                    fs.unlink(d, name)
                except DaxfsError:
                    ino = fs.mknod(d, name, stat.S_IFREG | 0o600, 0, 0).ino
                    fs.write(ino, rnd.randrange(30000), os.urandom(rnd.randrange(1, 9000)))
            elif r < 0.72:
                a, b = b"x%d" % rnd.randrange(6), b"x%d" % rnd.randrange(6)
                try:
                    fs.rename(d, a, d, b)
                except DaxfsError:
                    pass
            elif r < 0.78:
                name = b"dir%d" % rnd.randrange(3)
                try:
                    fs.rmdir(d, name)
                except DaxfsError:
                    try:
                        fs.mkdir(d, name, 0o755, 0, 0)
                    except DaxfsError:
                        pass
            elif r < 0.85:
                name = b"x%d" % rnd.randrange(6)
                try:
                    ino = fs.lookup(d, name).ino
                    fs.setattr(ino, size=rnd.randrange(40000))
                    fs.setxattr(ino, b"user.v", os.urandom(rnd.choice([10, 300, 5000])))
                except DaxfsError:
                    pass
            elif r < 0.92:
                a, b = b"x%d" % rnd.randrange(6), b"x%d" % rnd.randrange(6)
                try:
                    ia, ib = fs.lookup(d, a), fs.lookup(d, b)
                    n = min(ia.size, ib.size) // 4096 * 4096
                    if n and ia.ino != ib.ino:
                        fs.write(ib.ino, 0, fs.read(ia.ino, 0, n))
                        fs.dedupe_range(ia.ino, 0, n, [(ib.ino, 0)])
                except DaxfsError:
                    pass
            else:
                fs.commit()
        except NoSpace:
            for name in list(tracked)[:1]:
                pass
    fs.close()


if __name__ == "__main__":
    main()
