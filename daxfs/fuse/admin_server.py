"""The daemon side of the admin requests (daxfs/control/admin.py holds
their names and the report's shape): root-only setxattr/getxattr on the
mount's root that inject a media error, read the last handler report, the
list of bad ranges, the device map and the names the map's reader needs.
FUSE-free: daxfs/fuse/operations.py calls `serve_set`/`serve_get` with the
caller's uid and turns engine errors into errnos."""

import json

from daxfs.control.admin import (LIST, MAP, MAP_PIECE, NAMES, NAMES_BUDGET, POISON,
                                 RANGE_REQUEST, REPORT, VALUE_MAX, report_dict)
from daxfs.engine.errors import InvalidArgument, NotPermitted
from daxfs.engine.format import BLOCK_SIZE as BS
from daxfs.engine.poison_target import is_metadata_request, metadata_block


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
        m = RANGE_REQUEST.fullmatch(value)
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
