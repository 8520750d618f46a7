"""Administrative requests to a live daemon, carried like the control
protocol (control.py) as extended attributes, but on the mount's root
directory and for root only:

  setxattr(ROOT, "user.daxfs.admin.poison", "<first byte> <length> [<kind>]")
      mark a device range bad (or, with a metadata kind such as
      "inode-tree", the root node of that tree) and run the failure
      handler at once; the daemon invalidates every affected file's pages
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
import re

from daxfs.engine.errors import InvalidArgument, NotPermitted
from daxfs.engine.format import BLOCK_SIZE as BS, TREE_NAMES

PREFIX = b"user.daxfs.admin."
POISON = PREFIX + b"poison"
REPORT = PREFIX + b"report"
LIST = PREFIX + b"poison-list"
MAP = PREFIX + b"map."
MAP_PIECE = 300
# "<offset> <length>": ASCII decimal digits only (str.isdigit takes any
# script's digits), at most 20 of them: numbers bounded before int()
_RANGE_REQUEST = re.compile(rb"([0-9]{1,20}) ([0-9]{1,20})")
VALUE_MAX = 60000

METADATA_KINDS = {"superblock": None, "superblock2": None, "log": None}
METADATA_KINDS.update({f"{name.replace(' ', '-')}-tree": tid for tid, name in TREE_NAMES.items()})


def is_admin_name(name: bytes) -> bool:
    return name.startswith(PREFIX)


def metadata_block(fs, kind: str) -> int:
    """The block a `--metadata KIND` injection aims at."""
    vol = fs.vol
    if kind == "superblock":
        return 0
    if kind == "superblock2":
        return vol.total_blocks - 1
    if kind == "log":
        return int(vol.sb["log_start"])
    tid = METADATA_KINDS.get(kind)
    if tid is None:
        raise InvalidArgument(f"unknown metadata kind {kind!r}; one of: "
                              + ", ".join(sorted(METADATA_KINDS)))
    for t in vol.trees.values():
        if t.tid == tid:
            if not t.height:
                raise InvalidArgument(f"the {kind} is empty: nothing to poison")
            return t.root
    raise InvalidArgument(f"this filesystem has no {kind}")


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
        value = bytes(value)
        m = _RANGE_REQUEST.fullmatch(value)
        if m is not None:
            off, length = int(m.group(1)), int(m.group(2))
            if length <= 0:
                raise InvalidArgument("length must be positive")
            bno = off // BS
            n = -(-(off + length) // BS) - bno
        elif value.isascii() and value.decode() in METADATA_KINDS:
            bno, n = metadata_block(self.fs, value.decode()), 1
        else:
            raise InvalidArgument("poison request is '<offset> <length>' (decimal bytes)"
                                  " or a metadata kind")
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
