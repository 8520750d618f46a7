"""Administrative requests to a live daemon, carried like the control
protocol (control.py) as extended attributes, but on the mount's root
directory and for root only:

  setxattr(ROOT, "user.daxfs.admin.poison", "<first byte> <length> [<kind>]")
      mark a device range bad (or, with a metadata kind such as
      "inode-tree", the root node of that tree; "inode-tree:leaf" or
      "inode-tree:interior" aim at a leaf or an interior node) and run the
      failure handler at once; the daemon invalidates every affected
      file's pages
  getxattr(ROOT, "user.daxfs.admin.report")       the last handler report (JSON)
  getxattr(ROOT, "user.daxfs.admin.poison-list")  every bad range with owners (JSON)
  getxattr(ROOT, "user.daxfs.admin.map.<block>")  device map records from a
      block on (JSON: {"records": [...], "next": block or null}), in pieces
      that fit an xattr value

Both sides live here: `serve_get`/`serve_set` for the daemon (called by
fuse_ops.py), `client_*` helpers for the commands.
"""

import json
import os

from daxfs.engine.errors import InvalidArgument, NotPermitted
from daxfs.engine.format import BLOCK_SIZE as BS, TREE_NAMES

PREFIX = b"user.daxfs.admin."
POISON = PREFIX + b"poison"
REPORT = PREFIX + b"report"
LIST = PREFIX + b"poison-list"
MAP = PREFIX + b"map."
MAP_PIECE = 300
VALUE_MAX = 60000

METADATA_KINDS = {"superblock": None, "superblock2": None, "log": None}
METADATA_KINDS.update({f"{name.replace(' ', '-')}-tree": tid for tid, name in TREE_NAMES.items()})


def is_admin_name(name: bytes) -> bool:
    return name.startswith(PREFIX)


WHICH = ("root", "leaf", "interior")


def is_metadata_request(text: str) -> bool:
    """Does `text` name metadata to poison (KIND or KIND:WHICH)?"""
    kind, _, which = text.partition(":")
    return kind in METADATA_KINDS and which in ("",) + WHICH


def metadata_block(fs, request: str) -> int:
    """The block a `--metadata KIND[:WHICH]` injection aims at: for a tree,
    its root (WHICH root, the default), its middle leaf in key order
    (leaf), or its middle interior node below the root (interior)."""
    vol = fs.vol
    kind, _, which = request.partition(":")
    which = which or "root"
    if kind not in METADATA_KINDS or which not in WHICH:
        raise InvalidArgument(f"unknown metadata {request!r}; one of: "
                              + ", ".join(sorted(METADATA_KINDS))
                              + ", a tree kind may end in :" + ", :".join(WHICH))
    tid = METADATA_KINDS[kind]
    if tid is None:
        if which != "root":
            raise InvalidArgument(f"the {kind} is not a tree: it has no {which}")
        if kind == "superblock":
            return 0
        if kind == "superblock2":
            return vol.total_blocks - 1
        return int(vol.sb["log_start"])
    tree = next((t for t in vol.trees.values() if t.tid == tid), None)
    if tree is None:
        raise InvalidArgument(f"this filesystem has no {kind}")
    if not tree.height:
        raise InvalidArgument(f"the {kind} is empty: nothing to poison")
    if which == "root":
        return tree.root
    nodes = [v for v in tree.walk(leaves=False) if not v.dangling]
    unreadable = [v for v in nodes if v.error]
    if unreadable:
        raise InvalidArgument(f"the {kind} cannot be walked to a {which} (block"
                              f" {unreadable[0].bno}: {unreadable[0].error}); aim at a block"
                              " with --block")
    if which == "leaf":
        pick = [v.bno for v in nodes if v.level == 0]
    else:
        pick = [v.bno for v in nodes if v.level > 0 and v.bno != tree.root]
    if not pick:
        raise InvalidArgument(f"the {kind} (height {tree.height}) has no {which} node"
                              " below its root")
    return pick[len(pick) // 2]


def report_dict(rep) -> dict:
    return {"bno": rep.bno, "nblocks": rep.nblocks, "action": rep.action,
            "seconds": rep.seconds, "lines": rep.lines(),
            "owners": [{"ino": o.owner, "kind": o.kind, "bno": o.bno, "nblocks": o.nblocks,
                        "offset": o.offset, "paths": o.paths, "what": o.describe()}
                       for o in rep.owners]}


# ---- daemon side -------------------------------------------------------------
class AdminServer:
    def __init__(self, fs):
        self.fs = fs
        self.last_report = None

    def serve_set(self, uid: int, name: bytes, value: bytes) -> list[int]:
        """Returns the inodes whose cached pages must be invalidated."""
        if uid != 0:
            raise NotPermitted("only root may inject media errors")
        if name != POISON:
            raise InvalidArgument(f"unknown admin request {name!r}")
        from daxfs.engine import poison
        try:
            parts = value.decode().split()
        except UnicodeDecodeError:
            raise InvalidArgument("malformed poison request") from None
        if len(parts) == 1 and is_metadata_request(parts[0]):
            bno, n = metadata_block(self.fs, parts[0]), 1
        elif len(parts) == 2 and all(p.isdigit() for p in parts):
            off, length = int(parts[0]), int(parts[1])
            if length <= 0:
                raise InvalidArgument("length must be positive")
            bno = off // BS
            n = -(-(off + length) // BS) - bno
        else:
            raise InvalidArgument("poison request is '<offset> <length>' or a metadata kind")
        rep = poison.inject(self.fs, bno, n)
        self.last_report = report_dict(rep)
        return rep.data_inodes

    def serve_get(self, uid: int, name: bytes) -> bytes:
        from daxfs.engine import devmap, poison
        if uid != 0:
            # reports and the map name every file (paths included), also
            # those in directories the caller may not search
            raise NotPermitted("only root may read the daemon's reports and map")
        if name == REPORT:
            return json.dumps(self.last_report).encode()
        if name == LIST:
            return json.dumps([report_dict(r) for r in poison.listing(self.fs)]).encode()[:VALUE_MAX]
        if name.startswith(MAP):
            digits = name[len(MAP):]
            if not digits.isdigit() or len(digits) > 20:   # no sign, "_" or spaces
                raise InvalidArgument("map request needs a block number")
            start = int(digits)
            recs = devmap.records(self.fs, start, MAP_PIECE + 1)
            nxt = None
            if len(recs) > MAP_PIECE:
                nxt = recs[MAP_PIECE].bno
                recs = recs[:MAP_PIECE]
                if nxt <= start:
                    nxt = start + 1
            body = {"records": devmap.to_dicts(recs), "next": nxt,
                    "total_blocks": self.fs.vol.total_blocks}
            return json.dumps(body).encode()
        raise InvalidArgument(f"unknown admin request {name!r}")


# ---- client side --------------------------------------------------------------
def mount_root(path: str) -> str:
    """The root of the mount holding path."""
    path = os.path.realpath(path)
    dev = os.stat(path).st_dev
    while path != "/":
        parent = os.path.dirname(path)
        if os.stat(parent).st_dev != dev:
            return path
        path = parent
    return path


def client_poison(root: str, request: str) -> dict:
    os.setxattr(root, POISON, request.encode())
    return json.loads(os.getxattr(root, REPORT))


def client_list(root: str) -> list[dict]:
    return json.loads(os.getxattr(root, LIST))


def client_map(root: str):
    from daxfs.engine import devmap
    start = 0
    out = []
    total = 0
    while start is not None:
        body = json.loads(os.getxattr(root, MAP + str(start).encode()))
        out += devmap.from_dicts(body["records"])
        total = body["total_blocks"]
        start = body["next"]
    return out, total
