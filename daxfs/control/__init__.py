"""The control protocol that carries what the kernel never forwards to a
FUSE daemon (FICLONE, FICLONERANGE, FIDEDUPERANGE, FS_IOC_FIEMAP) and root's
administrative requests, both over extended attributes:

* protocol.py  the wire formats and names (docs/control-protocol.md is the spec)
* client.py    the Python client (`daxfs reflink`, `daxfs dedupe`, tests)
* admin.py     root's requests to a live daemon (poison, reports, device map): names, report shape, client; the daemon side is daxfs/fuse/admin_server.py
* preload/     the LD_PRELOAD library that speaks it for unmodified tools

The daemon's side is daxfs/fuse/ (control_server.py, admin_server.py).
"""
