"""Phase 3 of a repair, second half: the namespace -- directory entries,
/lost+found, link counts, the orphan list.

* Entries: invalid names (the directory-entry record check) and names
  repeated in one directory are dropped; an entry in a missing directory,
  in an inode that is not a directory, naming a missing inode (one that
  primary.py could not make again) or naming the root is dropped; its file
  type is set from the inode; an entry filed under the wrong name hash
  is refiled.  A directory lives in exactly one directory: the one its
  parent pointer names if that holds an entry, else the first.
* Every live inode is reachable from the root: a directory in no
  directory (or in a loop) and an inode with links but no name go to
  /lost+found, named by their inode number, as xfs_repair does.
* Link counts, parent pointers and block counts are recounted; a size no
  file can have is set from the extents (never above the maximum file
  size), a symbolic link's from its target, a directory's from its
  entries (dirs.dir_sizes); every inode with no link goes on the orphan
  list.

Reads and writes `state.inodes`, `dirents`, `orphans`; reads `extents`.
"""

from __future__ import annotations

import stat

from daxfs.engine.dirs import DIR_HEAD_BYTES, dir_sizes
from daxfs.engine.format import (BLOCK_SIZE as BS, DT_OF_FMT, MAX_FILE_BYTES, ROOT_INO,
                                 SYMLINK_MAX, name_hash)
from daxfs.engine.trees import DirentRec, check_dirent

from .primary import make_inode, mended_entry, new_ino, symlink_len
from .report import show

LOST_FOUND = b"lost+found"


def run(st) -> None:
    ns = Namespace(st)
    ns.fix_entries()
    ns.connect()
    ns.fix_counts()
    ns.fix_dir_sizes()


class Namespace:
    def __init__(self, st):
        self.st = st
        self.inodes = st.inodes
        self.lost_found = None
        self._used_pos: dict[int, set] = {}
        self._by_name: dict[tuple, DirentRec] = {}

    def _dir_name(self, parent: int) -> str:
        return self.st.paths.get(parent, f"directory {parent}")

    # ---- entries ------------------------------------------------------------
    def fix_entries(self) -> None:
        st, inodes = self.st, self.inodes
        kept = []
        seen_names: set[tuple] = set()
        for e in st.dirents:
            what = f"{self._dir_name(e.parent)}: entry {show(e.name)!r}"
            if e.namelen != len(e.name) and e.name:
                e = e._replace(namelen=len(e.name))
            # (a wrong hash is refiled and a wrong file type set, below)
            target = inodes.get(e.ino)
            want = DT_OF_FMT[stat.S_IFMT(target.mode)] if target is not None else e.ftype
            why = check_dirent(mended_entry(e)._replace(ftype=want), st.total)
            if why:
                st.fix(f"{why}: dropped")
                continue
            if (e.parent, e.name) in seen_names:
                st.fix(f"{what}: the name appears twice in the directory: second dropped")
                continue
            seen_names.add((e.parent, e.name))
            if e.parent not in inodes:
                st.fix(f"{what} in a missing directory: dropped")
                continue
            if not stat.S_ISDIR(inodes[e.parent].mode):
                st.fix(f"{what} in an inode that is not a directory: dropped")
                continue
            if e.ino not in inodes:
                st.fix(f"{what} names missing inode {e.ino}: dropped")
                st.report.lost(e.ino, "named by a directory entry, its inode is gone")
                continue
            if e.ino == ROOT_INO:
                st.fix(f"{what} names the root directory: dropped")
                continue
            if e.ftype != want:
                st.fix(f"{what}: file type {e.ftype} set to {want}")
                e = e._replace(ftype=want)
            kept.append(e)
        # a directory lives in exactly one directory: the one its parent
        # pointer names if that holds an entry, else the first
        by_dir: dict[int, list] = {}
        for e in kept:
            if stat.S_ISDIR(inodes[e.ino].mode):
                by_dir.setdefault(e.ino, []).append(e)
        drop = set()
        for d, ents in by_dir.items():
            if len(ents) > 1:
                keep = next((e for e in ents if e.parent == inodes[d].parent), ents[0])
                for e in ents:
                    if e is not keep:
                        drop.add((e.parent, e.pos))
                        st.fix(f"directory {st.where(d)}: extra entry {show(e.name)!r} in"
                               f" directory {e.parent} dropped (a directory has one parent)")
        st.dirents = [e for e in kept if (e.parent, e.pos) not in drop]
        for e in st.dirents:
            self._used_pos.setdefault(e.parent, set()).add(e.pos)
            self._by_name.setdefault((e.parent, e.name), e)
        # the key's hash half must be the name's, or lookups cannot find it
        for e in [e for e in st.dirents if e.pos >> 32 != name_hash(e.name)]:
            self._remove_entry(e)
            self._add_entry(e.parent, e.name, e.ino)
            st.fix(f"{self._dir_name(e.parent)}: entry {show(e.name)!r} was filed"
                   " under the wrong hash: moved")

    def _remove_entry(self, e: DirentRec) -> None:
        self.st.dirents.remove(e)
        self._used_pos[e.parent].discard(e.pos)
        if self._by_name.get((e.parent, e.name)) == e:
            del self._by_name[(e.parent, e.name)]

    def _add_entry(self, parent: int, name: bytes, ino: int) -> None:
        used = self._used_pos.setdefault(parent, set())
        h = name_hash(name) << 32
        seq = 0
        while h | seq in used:
            seq += 1
        used.add(h | seq)
        e = DirentRec(parent, h | seq, ino, DT_OF_FMT[stat.S_IFMT(self.inodes[ino].mode)],
                      len(name), name)
        self.st.dirents.append(e)
        self._by_name[(parent, name)] = e

    # ---- reachability -----------------------------------------------------------
    def _reachable(self) -> set[int]:
        ch: dict[int, list] = {}
        for e in self.st.dirents:
            ch.setdefault(e.parent, []).append(e.ino)
        seen = {ROOT_INO}
        stack = [ROOT_INO]
        while stack:
            for ino in ch.get(stack.pop(), []):
                if ino not in seen:
                    seen.add(ino)
                    if stat.S_ISDIR(self.inodes[ino].mode):
                        stack.append(ino)
        return seen

    def connect(self) -> None:
        """Every live inode reachable from the root: lost ones to
        /lost+found, unlinked ones on the orphan list."""
        st, inodes = self.st, self.inodes
        for _ in range(len(inodes) + 2):
            reach = self._reachable()
            named = {e.ino for e in st.dirents}
            holders = {e.parent for e in st.dirents}
            lost_dirs = [i for i, r in inodes.items() if i not in reach
                         and stat.S_ISDIR(r.mode) and i != ROOT_INO
                         and (r.nlink or i in named or i in holders)]
            if not lost_dirs:
                break
            # directories with no entry first; else one inside a loop
            heads = [i for i in lost_dirs if i not in named]
            if not heads:
                d = lost_dirs[0]
                e = next(e for e in st.dirents if e.ino == d)
                self._remove_entry(e)
                st.fix(f"directory inode {d} was in a directory loop: entry {show(e.name)!r}"
                       f" in directory {e.parent} dropped")
                heads = [d]
            for d in heads:
                self._to_lost_found(d)
        reach = self._reachable()
        named = {e.ino for e in st.dirents}
        for ino in sorted(inodes):
            r = inodes[ino]
            if ino in named or ino == ROOT_INO or stat.S_ISDIR(r.mode) and ino in reach:
                continue
            if stat.S_ISDIR(r.mode):
                # unreachable directory that is unlinked (nlink 0, no children)
                if r.nlink:
                    inodes[ino] = r._replace(nlink=0)
                continue
            if r.nlink:
                self._to_lost_found(ino)

    def _lost_found(self) -> int:
        if self.lost_found is not None:
            return self.lost_found
        st = self.st
        name, k = LOST_FOUND, 0
        while True:
            e = self._by_name.get((ROOT_INO, name))
            if e is None:
                break
            if stat.S_ISDIR(self.inodes[e.ino].mode):
                self.lost_found = e.ino
                return e.ino
            k += 1
            name = LOST_FOUND + b".%d" % k
        ino = new_ino(st)
        make_inode(st, ino, stat.S_IFDIR | 0o700, parent=ROOT_INO, nlink=2)
        st.report.fresh.add(ino)
        self._add_entry(ROOT_INO, name, ino)
        st.paths[ino] = "/" + name.decode()
        st.fix(f"created /{name.decode()} (inode {ino})")
        self.lost_found = ino
        return ino

    def _to_lost_found(self, ino: int) -> None:
        st = self.st
        lf = self._lost_found()
        base = str(ino).encode()
        name, k = base, 0
        while (lf, name) in self._by_name:
            k += 1
            name = base + b".%d" % k
        self._add_entry(lf, name, ino)
        r = self.inodes[ino]
        if stat.S_ISDIR(r.mode):
            r = r._replace(parent=lf)
        if r.nlink == 0:
            r = r._replace(nlink=1)
        self.inodes[ino] = r
        st.paths[ino] = f"{st.paths[lf]}/{name.decode()}"
        st.report.moved.add(ino)
        kind = "directory" if stat.S_ISDIR(r.mode) else "inode"
        st.fix(f"{kind} {ino} was in no directory: moved to {st.paths[ino]}")

    # ---- counts -------------------------------------------------------------------
    def fix_counts(self) -> None:
        st, inodes = self.st, self.inodes
        links: dict[int, int] = {}
        subdirs: dict[int, int] = {}
        parent_of: dict[int, int] = {}
        for e in st.dirents:
            links[e.ino] = links.get(e.ino, 0) + 1
            if stat.S_ISDIR(inodes[e.ino].mode):
                subdirs[e.parent] = subdirs.get(e.parent, 0) + 1
                parent_of[e.ino] = e.parent
        blocks: dict[int, int] = {}
        last: dict[int, int] = {}
        for e in st.extents:
            blocks[e.ino] = blocks.get(e.ino, 0) + e.len
            last[e.ino] = e.foff + e.len
        bmap_lost = st.salv["bmap"].lost
        xattr_gap = st.salv["xattr"].may_lack
        orphans = set()
        for ino in sorted(inodes):
            r = inodes[ino]
            say = st.fix if ino not in st.created else (lambda line: None)
            if stat.S_ISDIR(r.mode):
                live = ino == ROOT_INO or ino in parent_of
                want = 2 + subdirs.get(ino, 0) if live else 0
                if live and ino != ROOT_INO and r.parent != parent_of[ino]:
                    say(f"{st.where(ino)}: parent pointer {r.parent} set to {parent_of[ino]}")
                    r = r._replace(parent=parent_of[ino])
            else:
                want = links.get(ino, 0)
            if r.nlink != want:
                say(f"{st.where(ino)}: link count {r.nlink} set to {want}")
                r = r._replace(nlink=want)
            if want == 0:
                orphans.add(ino)
            b = blocks.get(ino, 0)
            if r.blocks != b:
                if b < r.blocks and bmap_lost:
                    say(f"{st.where(ino)}: {r.blocks - b} of its {r.blocks} blocks were"
                        " mapped by unreadable extent-map nodes: lost (they read as zeros now)")
                    st.report.partial(ino, f"{r.blocks - b} data blocks lost")
                else:
                    say(f"{st.where(ino)}: block count {r.blocks} set to {b}")
                r = r._replace(blocks=b)
            if r.size > MAX_FILE_BYTES:
                size = min(last.get(ino, 0) * BS, MAX_FILE_BYTES)
                say(f"{st.where(ino)}: impossible size {r.size} set to {size}")
                r = r._replace(size=size)
            if stat.S_ISLNK(r.mode) and (r.size > SYMLINK_MAX or b and r.size == 0):
                size = symlink_len(st, ino)
                say(f"{st.where(ino)}: symbolic link size {r.size} set to {size}")
                r = r._replace(size=size)
            if ino not in st.created and xattr_gap((ino,)):
                st.report.partial(ino, "extended attributes may be lost")
            inodes[ino] = r
        for ino in sorted(orphans - st.orphans):
            st.fix(f"inode {ino}: link count 0: put on the orphan list")
        for ino in sorted(st.orphans - orphans):
            why = "does not exist" if ino not in inodes else "still has links"
            st.fix(f"orphan list: inode {ino} {why}: removed from the list")
        st.orphans = orphans
        top = max(inodes) if inodes else ROOT_INO
        if st.next_ino <= top:
            st.next_ino = top + 1

    def fix_dir_sizes(self) -> None:
        """A live directory's size is the bytes of its entries (dirs.py);
        after the entries are mended, so lost+found's too."""
        st = self.st
        sizes = dir_sizes((e.parent, e.name) for e in st.dirents)
        for ino, r in self.inodes.items():
            if stat.S_ISDIR(r.mode) and r.nlink:
                want = sizes.get(ino, DIR_HEAD_BYTES)
                if r.size != want:
                    if ino not in st.created:
                        st.fix(f"{st.where(ino)}: directory size {r.size} set to {want}")
                    self.inodes[ino] = r._replace(size=want)
