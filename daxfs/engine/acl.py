"""What POSIX ACLs mean: the kernel's xattr form of an ACL and the rules
that keep an inode's mode and its ACLs in step.

An ACL is stored as the extended attribute the kernel sends and reads back
(``system.posix_acl_access``, ``system.posix_acl_default``), in its xattr
form: a little-endian u32 version (2), then one (u16 tag, u16 perm, u32 id)
entry per line of `getfacl` output, sorted by tag and id.  The kernel
checks permissions against it (FUSE_POSIX_ACL, default_permissions); the
filesystem keeps the mode in step, as fs/posix_acl.c does for a kernel
filesystem:

* `mode_bits`: setting an access ACL sets the mode's permission bits
  (owner from USER_OBJ, group from MASK or else GROUP_OBJ, other from
  OTHER); an ACL with only those three entries is the mode itself and is
  not stored (`is_minimal`);
* `chmod`: a mode change rewrites the same three entries of a stored
  access ACL;
* `inherit`: a new inode in a directory with a default ACL gets that ACL,
  masked by the mode it was created with, as its access ACL (and a new
  directory gets it as its default ACL too).

Nothing here touches the image: fs.py stores and removes the attributes.
"""

import struct

from .errors import InvalidArgument

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
NAMES = (ACCESS, DEFAULT)

VERSION = 2
USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
_NAMED = (USER, GROUP)
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")


def parse(value: bytes) -> list[list[int]]:
    """The entries [tag, perm, id] of an ACL in xattr form; InvalidArgument
    unless it is one the kernel would accept (posix_acl_valid): the three
    base entries once each, named entries with distinct ids, a MASK when
    there is a named entry, entries in order."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise InvalidArgument(f"an ACL of {len(value)} bytes is not a whole number of entries")
    if _HEADER.unpack_from(value)[0] != VERSION:
        raise InvalidArgument("unknown ACL version")
    entries = [list(e) for e in _ENTRY.iter_unpack(value[_HEADER.size:])]
    if not entries:
        return entries
    seen: dict[int, int] = {}
    last = (0, -1)
    for tag, perm, eid in entries:
        if tag not in (USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER) or perm & ~7:
            raise InvalidArgument(f"bad ACL entry tag {tag:#x} perm {perm:#o}")
        key = (tag, eid if tag in _NAMED else -1)
        if key <= last:
            raise InvalidArgument("ACL entries out of order or repeated")
        last = key
        seen[tag] = seen.get(tag, 0) + 1
    if not all(seen.get(t) == 1 for t in (USER_OBJ, GROUP_OBJ, OTHER)):
        raise InvalidArgument("an ACL needs one owner, one group and one other entry")
    if (seen.get(USER) or seen.get(GROUP)) and not seen.get(MASK):
        raise InvalidArgument("an ACL with named entries needs a mask entry")
    return entries


def encode(entries) -> bytes:
    return _HEADER.pack(VERSION) + b"".join(_ENTRY.pack(*e) for e in entries)


def is_minimal(entries) -> bool:
    """Only the owner, group and other entries: the mode says it all."""
    return len(entries) == 3


def _find(entries, tag: int):
    for e in entries:
        if e[0] == tag:
            return e
    return None


def mode_bits(entries) -> int:
    """The permission bits (0o777) a mode must have to match the ACL
    (posix_acl_equiv_mode)."""
    group = _find(entries, MASK) or _find(entries, GROUP_OBJ)
    return _find(entries, USER_OBJ)[1] << 6 | group[1] << 3 | _find(entries, OTHER)[1]


def chmod(entries, mode: int) -> list[list[int]]:
    """The access ACL after a chmod to `mode` (posix_acl_chmod)."""
    out = [list(e) for e in entries]
    _find(out, USER_OBJ)[1] = mode >> 6 & 7
    (_find(out, MASK) or _find(out, GROUP_OBJ))[1] = mode >> 3 & 7
    _find(out, OTHER)[1] = mode & 7
    return out


def inherit(default, mode: int) -> tuple[int, list[list[int]] | None]:
    """(mode, access ACL or None) of a new inode created with `mode` in a
    directory whose default ACL is `default` (posix_acl_create_masq): the
    entries are masked by the mode's bits and the mode by the entries';
    None when the result says no more than the mode."""
    acl = [list(e) for e in default]
    perms = mode & 0o777
    for e in acl:
        if e[0] == USER_OBJ:
            e[1] &= perms >> 6
            perms &= e[1] << 6 | 0o077
        elif e[0] == OTHER:
            e[1] &= perms & 7
            perms &= e[1] | 0o770
    group = _find(acl, MASK) or _find(acl, GROUP_OBJ)
    group[1] &= perms >> 3 & 7
    perms &= group[1] << 3 | 0o707
    return mode & ~0o777 | perms, (None if is_minimal(acl) else acl)


def permits(entries, uid: int, in_group, owner: int, group: int, want: int) -> bool:
    """Whether an access ACL grants `want` (rwx bits, 4/2/1) to `uid`
    (`in_group(gid)`: it is in that group) on a file of `owner`/`group`,
    as the kernel's posix_acl_permission: the owner entry for the owner, a
    named user entry, else any matching group entry, else other; the mask
    limits all but the owner and other entries."""
    mask = _find(entries, MASK)
    limit = mask[1] if mask is not None else 7
    in_a_group = False
    for tag, perm, eid in entries:
        if tag == USER_OBJ and uid == owner:
            return perm & want == want
        if tag == USER and eid == uid:
            return perm & limit & want == want
        if tag == GROUP_OBJ and in_group(group) or tag == GROUP and in_group(eid):
            in_a_group = True
            if perm & want == want:
                return limit & want == want
    if in_a_group:
        return False
    return _find(entries, OTHER)[1] & want == want
