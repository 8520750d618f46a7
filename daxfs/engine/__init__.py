"""The engine: everything below the POSIX line, with no FUSE and no command
line in sight.

From the bottom up (each module imports only the ones above it in this list):

* format      the on-disk format: every dtype, magic, owner code, size check
* errors      one exception class per meaning, each with its errno
* ranges      byte ranges callers supply, checked in one place
* files       files kept beside an image, opened safely (no symlink, FIFO, huge file)
* checksum    the crc32c that seals every metadata block
* badblocks   the device's list of bad (poisoned) ranges
* pmem        the device: the image mapped MAP_SHARED, flush, poison checks
* journal     redo log, the running transaction, commit order
* btree       one generic B+tree over device blocks; trees: the eight descriptors
* superblock  the two superblock copies
* delayed     changes kept in memory until commit (the base of inodes, rmap, orphans)
* rmap refcount alloc inodes dirs xattrs orphans filemap acl
              what each tree's records mean; filemap is the data path
* attrs       the in-core values the API hands out
* volume      an open image: device, journal, trees, allocator bound together
* fs          the filesystem API (POSIX operations); mkfs makes an image
* poison devmap   media errors and the device map, over the rmap
* poison_target    which block a named piece of metadata is (poison's aim)
* damage      what metadata damage an open image still has (asked before a mount serves it)

Nothing here imports daxfs.fuse, daxfs.control, daxfs.cli, pyfuse3 or trio
(tests/test_layers.py checks it).
"""
