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
  getxattr(ROOT, "user.daxfs.admin.map.<block>.<skip>")  at most MAP_PIECE
      device map records from that block on, leaving out the first <skip>
      that start there (JSON: {"rows": [[bno, nblocks, owner, flags,
      offset], ...], "next": [block, skip] or null, "total_blocks": N};
      "map.0.0" is the first piece): a piece costs the daemon what its own
      records cost (daxfs/engine/devmap.py `piece`)
  getxattr(ROOT, "user.daxfs.admin.names.<parent>.<pos>")  directory entries
      from that key on (JSON: {"entries": [[parent, ino, name], ...],
      "next": [parent, pos] or null}; "names.0.0" is the first piece): what
      the map's reader names the files with

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
NAMES = PREFIX + b"names."
MAP_PIECE = 600         # records per map piece (a row is at most ~70 bytes of JSON)
NAMES_BUDGET = 40000    # bytes of names per names piece
# "<offset> <length>": ASCII decimal digits only (str.isdigit takes any
# script's digits), at most 20 of them: numbers bounded before int()
_RANGE_REQUEST = re.compile(rb"([0-9]{1,20}) ([0-9]{1,20})")
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
            "seconds": rep.seconds, "lines": rep.lines(), "healed": rep.healed,
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
        elif value.isascii() and is_metadata_request(value.decode()):
            bno, n = metadata_block(self.fs, value.decode()), 1
        else:
            raise InvalidArgument("poison request is '<offset> <length>' (decimal bytes)"
                                  " or a metadata kind (KIND or KIND:root|leaf|interior)")
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
            parts = name[len(MAP):].split(b".")
            if len(parts) != 2:
                raise InvalidArgument("map request needs <block>.<skip>")
            start, skip = (_number(p, "map request needs numbers") for p in parts)
            recs, nxt = devmap.piece(self.fs, start, skip, MAP_PIECE)
            body = {"rows": [r.row() for r in recs], "next": nxt,
                    "total_blocks": self.fs.vol.total_blocks}
            return json.dumps(body, separators=(",", ":")).encode()
        if name.startswith(NAMES):
            parts = name[len(NAMES):].split(b".")
            if len(parts) != 2:
                raise InvalidArgument("names request needs <parent>.<pos>")
            key = tuple(_number(p, "names request needs numbers") for p in parts)
            entries, nxt = devmap.dir_entries(self.fs, key, NAMES_BUDGET)
            return json.dumps({"entries": entries, "next": nxt},
                              separators=(",", ":")).encode()
        raise InvalidArgument(f"unknown admin request {name!r}")


def _number(digits: bytes, why: str) -> int:
    """A request's number: decimal digits only (no sign, "_" or spaces)."""
    if not digits.isdigit() or len(digits) > 20:
        raise InvalidArgument(why)
    return int(digits)


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
    """The map of the mount at `root`, read piece by piece, with paths:
    (records, total_blocks)."""
    from daxfs.engine import devmap
    recs: list = []
    cursor, total = (0, 0), 0
    while cursor is not None:
        body = json.loads(os.getxattr(root, MAP + b"%d.%d" % tuple(cursor)))
        recs.extend(devmap.MapRecord.from_row(row) for row in body["rows"])
        total = body["total_blocks"]
        cursor = body["next"]
    recs = devmap.merge(recs)
    if any(r.is_file for r in recs):
        devmap.fill_paths(recs, _client_names(root))
    return recs, total


def _client_names(root: str):
    key = (0, 0)
    while key is not None:
        body = json.loads(os.getxattr(root, NAMES + b"%d.%d" % tuple(key)))
        yield from body["entries"]
        key = body["next"]
