"""What a repair knows while it runs, handed from phase to phase
(salvage -> primary -> namespace -> derive -> layout -> write).

Records are the trees' named tuples (engine/trees.py): `InodeRec`,
`BmapRec`, `DirentRec`, `XattrRec`...; each phase's module says which of
these fields it fills in and which it only reads.
"""

import time

from daxfs.engine.format import ROOT_INO

from .report import Report


class RepairState:
    def __init__(self, vol):
        self.vol = vol
        self.pmem = vol.pmem
        self.sb = vol.sb
        self.total = vol.total_blocks
        self.report = Report()
        self.now = time.time_ns()
        self.paths: dict[int, str] = {ROOT_INO: "/"}   # for messages
        # salvage.py
        self.salv: dict = {}            # tree name -> Salvaged
        # primary.py and namespace.py: the records nothing else can derive
        self.inodes: dict = {}          # ino -> InodeRec
        self.extents: list = []         # BmapRec, sorted by key
        self.dirents: list = []         # DirentRec
        self.xattrs: list = []          # XattrRec, sorted by key
        self.orphans: set[int] = set()
        self.next_ino = 0
        self.created: set[int] = set()  # inodes repair made (their counts are its own)
        self.meta = None                # bool per block: metadata for certain
        self.fixed_meta = None          # bool per block: superblocks and log
        self.data = None                # int per block: extents mapping it
        # derive.py
        self.refc: list = []
        self.used_base = None           # bool per block: owned, tree nodes and pool aside
        self.rmap_base: list = []       # rmap records that do not depend on the layout
        # layout.py and write.py
        self.rebuild: set[str] = set()  # trees written anew
        self.nodes: dict = {}           # tree -> its node blocks after the repair
        self.pool: list[int] = []
        self.records: dict = {}         # tree -> its records after the repair

    def fix(self, line: str) -> None:
        self.report.fix(line)

    def where(self, ino: int) -> str:
        p = self.paths.get(ino)
        return f"inode {ino} ({p})" if p else f"inode {ino}"
