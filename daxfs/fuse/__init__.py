"""The FUSE side of daxfs: a mounted image served to the kernel through
pyfuse3 + trio.

* binding.py         the one place that knows which pyfuse3 daxfs runs on (patched 3.5.0)
* operations.py      the request handlers (thin: errno boundary, lookup counts)
* callers.py         who calls a request (uid, gid, groups, pid) from /proc alone
* inode_locks.py     the inodes a long request works on, step by step
* error_log.py       errors answered, logged without flooding
* kernel_size.py     the kernel's own i_size of an inode, asked without a request
* control_server.py  the daemon side of the control protocol (reflink, dedupe, FIEMAP)
* admin_server.py    the daemon side of root's admin requests (poison, reports, map)
* mount.py           the life of one mount (AsyncExitStack + trio nursery, signals)

Everything that decides anything about files is the engine's (daxfs.engine).
"""
