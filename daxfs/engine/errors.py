"""The engine's exception types: one class per meaning, each carrying the errno
a kernel filesystem (XFS) would return for it.

Only the FUSE adapter and the CLI turn these into errno values or messages;
the engine raises them and never looks at errno itself.
"""

import errno as _errno


class DaxfsError(Exception):
    """Base of every error the engine raises on purpose."""

    errno = _errno.EIO

    def __init__(self, message: str = ""):
        super().__init__(message or self.__class__.__doc__.strip().splitlines()[0])


class NotFound(DaxfsError):
    """No such file, directory or attribute."""
    errno = _errno.ENOENT


class Exists(DaxfsError):
    """The name exists already."""
    errno = _errno.EEXIST


class NotADirectory(DaxfsError):
    """Not a directory."""
    errno = _errno.ENOTDIR


class IsADirectory(DaxfsError):
    """Is a directory."""
    errno = _errno.EISDIR


class NotEmpty(DaxfsError):
    """Directory not empty."""
    errno = _errno.ENOTEMPTY


class NameTooLong(DaxfsError):
    """A name is longer than 255 bytes."""
    errno = _errno.ENAMETOOLONG


class NoSpace(DaxfsError):
    """No space left on the device."""
    errno = _errno.ENOSPC


class BackingFull(NoSpace):
    """The filesystem holding the image has no room for blocks the image
    needs (images are sparse: their blocks take host space when first
    used)."""


class InvalidArgument(DaxfsError):
    """Invalid argument (a bad range, alignment or request)."""
    errno = _errno.EINVAL


class NotSupported(DaxfsError):
    """Operation not supported on this filesystem."""
    errno = _errno.EOPNOTSUPP


class NoAttribute(DaxfsError):
    """No such extended attribute."""
    errno = _errno.ENODATA


class ValueTooLarge(DaxfsError):
    """A value does not fit the caller's buffer or the format's limit."""
    errno = _errno.ERANGE


class AttributeTooBig(DaxfsError):
    """An extended attribute value is larger than 64 KiB."""
    errno = _errno.E2BIG


class FileTooBig(DaxfsError):
    """The file would exceed the maximum file size."""
    errno = _errno.EFBIG


class CrossDevice(DaxfsError):
    """The two files are not on the same filesystem."""
    errno = _errno.EXDEV


class PermissionDenied(DaxfsError):
    """Permission denied."""
    errno = _errno.EACCES


class NotPermitted(DaxfsError):
    """Operation not permitted."""
    errno = _errno.EPERM


class BadFileDescriptor(DaxfsError):
    """The file is not open in a mode that allows this."""
    errno = _errno.EBADF


class TooManyLinks(DaxfsError):
    """Too many links."""
    errno = _errno.EMLINK


class ReadOnly(DaxfsError):
    """The filesystem is read-only."""
    errno = _errno.EROFS


class MediaError(DaxfsError):
    """A load from a poisoned (bad) range of the device failed."""
    errno = _errno.EIO

    def __init__(self, block: int, message: str = ""):
        self.block = block
        super().__init__(message or f"media error at block {block}")


class Corrupted(DaxfsError):
    """On-disk metadata failed verification."""
    errno = _errno.EUCLEAN

    def __init__(self, block: int, check: str):
        self.block = block
        self.check = check
        super().__init__(f"block {block}: {check}")


class DamagedFile(DaxfsError):
    """One file's on-disk record or extents are inconsistent (an impossible
    size, an extent over metadata, free space or another file's blocks):
    that file fails with EUCLEAN, as XFS's EFSCORRUPTED, and is never
    written through; the rest of the filesystem carries on.  Unmount and
    run `daxfs check --repair`."""
    errno = _errno.EUCLEAN

    def __init__(self, ino: int, check: str):
        self.ino = ino
        self.check = check
        super().__init__(f"inode {ino}: {check} (run daxfs check --repair)")


class TrimFirst(DaxfsError):
    """The file still has blocks past its end waiting to be freed in steps
    (a truncation done in bounded steps), and this operation would bring
    them inside the file: the caller runs `Filesystem.trim_step(ino)` until
    it returns True, then retries."""
    errno = _errno.EAGAIN

    def __init__(self, ino: int):
        self.ino = ino
        super().__init__(f"inode {ino}: blocks past the end of the file are still being freed")


class WriteFailed(DaxfsError):
    """The host filesystem under the image reported an error writing it
    (msync, fdatasync, pwrite: EIO, ENOSPC...).  A commit that meets it
    shuts the filesystem down (as LMDB's fatal-error latch and XFS's
    shutdown on a log I/O error): the image keeps what the last successful
    commit made durable, and every later call, fsync included, fails."""
    errno = _errno.EIO


class Shutdown(DaxfsError):
    """The filesystem shut down after a metadata error; unmount and run check."""
    errno = _errno.EIO


class NeedsRepair(DaxfsError):
    """The image's metadata is damaged past what can be healed while it is
    open: it needs `daxfs check --repair`.  `readonly_ok`: what is damaged
    is not needed to read files (a read-only mount can serve them)."""
    errno = _errno.EUCLEAN

    def __init__(self, message: str, readonly_ok: bool = False):
        self.readonly_ok = readonly_ok
        super().__init__(message)


class NotAnImage(DaxfsError):
    """The file is not a daxfs image."""
    errno = _errno.EINVAL


class UnsafeFile(DaxfsError):
    """A file daxfs was to open beside an image (or make) is a symlink, a
    FIFO, a device or too large: root refuses to touch it."""
    errno = _errno.EPERM


class BadSideFile(DaxfsError):
    """A file beside the image (its bad-block list) is malformed."""
    errno = _errno.EINVAL


class ImageLocked(DaxfsError):
    """Another process holds the image open."""
    errno = _errno.EBUSY


class NoDevice(DaxfsError):
    """The operation needs a regular file (fallocate of a device node or socket)."""
    errno = _errno.ENODEV


class IllegalSeek(DaxfsError):
    """The file is a pipe (fallocate of a FIFO)."""
    errno = _errno.ESPIPE


class NoData(DaxfsError):
    """No data (SEEK_DATA) or hole (SEEK_HOLE) at or after the offset: it is at or past EOF."""
    errno = _errno.ENXIO
