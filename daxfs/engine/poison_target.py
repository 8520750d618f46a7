"""Which device block a named piece of metadata is: the aim of
`daxfs poison --metadata KIND[:WHICH]` offline and of the admin request
``user.daxfs.admin.poison`` on a live mount (KIND is superblock,
superblock2, log or a tree such as inode-tree; WHICH is root, leaf or
interior)."""

from .errors import InvalidArgument
from .format import TREE_NAMES

METADATA_KINDS = {"superblock": None, "superblock2": None, "log": None}
METADATA_KINDS.update({f"{name.replace(' ', '-')}-tree": tid for tid, name in TREE_NAMES.items()})

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
