"""The FUSE side of daxfs: a mounted image served to the kernel through
pyfuse3 + trio.

* operations.py      the request handlers (thin: errno boundary, lookup counts)
* kernel_size.py     the kernel's own i_size of an inode, asked without a request
* control_server.py  the daemon side of the control protocol (reflink, dedupe, FIEMAP)
* mount.py           the life of one mount (AsyncExitStack + trio nursery, signals)

Everything that decides anything about files is the engine's (daxfs.engine).
"""
