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

This module holds the request names, the report's JSON shape and the
`client_*` helpers the commands use; the daemon side is
daxfs/fuse/admin_server.py, and which block a metadata kind names is
daxfs/engine/poison_target.py.
"""

import json
import os
import re


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
RANGE_REQUEST = re.compile(rb"([0-9]{1,20}) ([0-9]{1,20})")
VALUE_MAX = 60000

def is_admin_name(name: bytes) -> bool:
    return name.startswith(PREFIX)


def report_dict(rep) -> dict:
    return {"bno": rep.bno, "nblocks": rep.nblocks, "action": rep.action,
            "seconds": rep.seconds, "lines": rep.lines(), "healed": rep.healed,
            "owners": [{"ino": o.owner, "kind": o.kind, "bno": o.bno, "nblocks": o.nblocks,
                        "offset": o.offset, "paths": o.paths, "what": o.describe()}
                       for o in rep.owners]}


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
