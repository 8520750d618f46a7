/*
 * libdaxfs_preload.so — the LD_PRELOAD client of the daxfs control protocol.
 *
 * Owns: carrying FICLONE, FICLONERANGE, FIDEDUPERANGE and FS_IOC_FIEMAP (and
 * copy_file_range, as a clone) from unmodified tools to the daxfs daemon,
 * which the kernel never asks for them.  The protocol itself (names, the
 * 64-byte request, the 16-byte dedupe result, the FIEMAP reply) is
 * documented in daxfs/control/protocol.py; this file must stay in step with it.
 *
 * Everything that is not a file on a daxfs mount falls through to the real
 * libc function (dlsym(RTLD_NEXT)) untouched.  "Is this fd on a daxfs
 * mount?" is decided per st_dev: the mount table must show a fuse.daxfs
 * mount with that device, and the xattr user.daxfs.probe must have the
 * protocol's value; the answer is cached per st_dev.  Cache entries expire after
 * one second: anonymous device numbers (FUSE's st_dev) are reused after an
 * unmount, and a stale "yes" would send control requests to whatever file
 * system got the number next (tmpfs, say, would store them as xattrs and
 * report success).  A probe that fails for a reason that says nothing about
 * the file system (EACCES on a file the caller may not read) is not cached.
 *
 * statfs/fstatfs/statfs64/fstatfs64 report XFS's magic for daxfs mounts
 * when DAXFS_FAKE_XFS=1 (duperemove refuses other file systems), and only
 * for FUSE mounts that answer the probe.
 *
 * Client-side checks are the VFS's, in the VFS's order, because the daemon
 * sees no file handle: see "Client-side checks" in daxfs/control/protocol.py.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/statfs.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>
#include <linux/fiemap.h>

#define EXPORT __attribute__((visibility("default")))

/* --- the protocol (daxfs/control/protocol.py) ----------------------------------- */
#define PROBE_NAME   "user.daxfs.probe"
#define PROBE_VALUE  "daxfs-control-1"
#define CLONE_NAME   "user.daxfs.clone"
#define DEDUPE_NAME  "user.daxfs.dedupe"
#define RESULT_NAME  "user.daxfs.result"
#define FIEMAP_FMT   "user.daxfs.fiemap.%" PRIu64 ".%" PRIu64 ".%" PRIu32
#define DXCP_MAGIC   0x50435844u
#define DXCP_VERSION 1
#define OP_CLONE     1
#define OP_DEDUPE    2
#define REQUEST_SIZE 64
#define RESULT_SIZE  16
#define FIEMAP_PER_CALL 2000
#define FIEMAP_HEAD  8
#define FIEMAP_EXT   32
#define XATTR_VALUE_MAX 65536

#define BLOCK            4096ULL
#define DEDUPE_MAX_LEN   (1ULL << 30)
#define XFS_MAGIC        0x58465342
#define FUSE_MAGIC       0x65735546
#define CACHE_SLOTS      64
#define CACHE_TTL_NS     1000000000LL

/* --- the real functions ------------------------------------------------ */
static void *real_fn(void **slot, const char *name)
{
    void *p = __atomic_load_n(slot, __ATOMIC_ACQUIRE);
    if (!p) {
        p = dlsym(RTLD_NEXT, name);
        __atomic_store_n(slot, p, __ATOMIC_RELEASE);
    }
    return p;
}
#define REAL(type, name) ({ static void *slot_; (type)real_fn(&slot_, #name); })

typedef int (*ioctl_fn)(int, unsigned long, ...);
typedef ssize_t (*cfr_fn)(int, __off64_t *, int, __off64_t *, size_t, unsigned int);
typedef int (*statfs_fn)(const char *, struct statfs *);
typedef int (*fstatfs_fn)(int, struct statfs *);
typedef int (*statfs64_fn)(const char *, struct statfs64 *);
typedef int (*fstatfs64_fn)(int, struct statfs64 *);

/* --- little-endian packing --------------------------------------------- */
static void put16(unsigned char *p, uint16_t v) { p[0] = v; p[1] = v >> 8; }
static void put32(unsigned char *p, uint32_t v) { put16(p, v); put16(p + 2, v >> 16); }
static void put64(unsigned char *p, uint64_t v) { put32(p, v); put32(p + 4, v >> 32); }
static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t get64(const unsigned char *p) { return get32(p) | (uint64_t)get32(p + 4) << 32; }

static void encode_request(unsigned char out[REQUEST_SIZE], unsigned op,
                           const struct stat *src, uint64_t src_off,
                           uint64_t dst_off, uint64_t len, int src_fd)
{
    put32(out, DXCP_MAGIC);
    put16(out + 4, DXCP_VERSION);
    put16(out + 6, op);
    put64(out + 8, (uint64_t)src->st_dev);
    put64(out + 16, (uint64_t)src->st_ino);
    put64(out + 24, src_off);
    put64(out + 32, dst_off);
    put64(out + 40, len);
    put64(out + 48, 0);                 /* flags */
    put32(out + 56, (uint32_t)src_fd);  /* i32 */
    put32(out + 60, 0);                 /* reserved */
}

/* remap_verify_area: offsets and end must be valid (non-negative) loff_t */
static int range_ok(uint64_t off, uint64_t len)
{
    return off <= INT64_MAX && len <= INT64_MAX && off + len <= INT64_MAX;
}

/* Write back the kernel's dirty pages of a range, as XFS's remap prep does;
 * never an fsync, so free when nothing is dirty.  Errors are ignored. */
static void writeback(int fd, uint64_t off, uint64_t len)
{
    int saved = errno;
    if (!range_ok(off, len))
        len = 0;
    if (off <= INT64_MAX)
        sync_file_range(fd, (__off64_t)off, (__off64_t)len,
                        SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                        SYNC_FILE_RANGE_WAIT_AFTER);
    errno = saved;
}

/* --- "is this st_dev a daxfs mount?" ------------------------------------ */
struct dev_slot {
    dev_t dev;
    int used;
    int verdict;
    int64_t stamp;
};
static struct dev_slot cache[CACHE_SLOTS];
static unsigned cache_next;
static pthread_mutex_t cache_lock = PTHREAD_MUTEX_INITIALIZER;

static void lock_cache(void) { pthread_mutex_lock(&cache_lock); }
static void unlock_cache(void) { pthread_mutex_unlock(&cache_lock); }

__attribute__((constructor)) static void daxfs_preload_init(void)
{
    /* a fork while another thread holds the lock must not leave it held */
    pthread_atfork(lock_cache, unlock_cache, unlock_cache);
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int cache_lookup(dev_t dev)
{
    int verdict = -1;
    int64_t now = now_ns();
    lock_cache();
    for (unsigned i = 0; i < CACHE_SLOTS; i++) {
        if (cache[i].used && cache[i].dev == dev) {
            if (now - cache[i].stamp < CACHE_TTL_NS)
                verdict = cache[i].verdict;
            break;
        }
    }
    unlock_cache();
    return verdict;
}

static void cache_store(dev_t dev, int verdict)
{
    int64_t now = now_ns();
    lock_cache();
    unsigned slot = CACHE_SLOTS;
    for (unsigned i = 0; i < CACHE_SLOTS; i++)
        if (cache[i].used && cache[i].dev == dev) { slot = i; break; }
    if (slot == CACHE_SLOTS)
        slot = cache_next++ % CACHE_SLOTS;
    cache[slot].dev = dev;
    cache[slot].used = 1;
    cache[slot].verdict = verdict;
    cache[slot].stamp = now;
    unlock_cache();
}

/* Is `dev` the device of a mount whose type is fuse.daxfs?  Only those may
 * be spoken to: any file system that stores user xattrs (ext4, tmpfs...)
 * could carry a forged user.daxfs.probe, and the requests would then be
 * stored as attributes there and "succeed" without doing anything.  Read
 * from /proc/self/mountinfo ("ID PARENT MAJ:MIN ROOT MNT OPTS... - TYPE
 * SOURCE SUPEROPTS"), only on a cache miss. */
static int dev_is_daxfs_mount(dev_t dev)
{
    int saved = errno;
    FILE *f = fopen("/proc/self/mountinfo", "re");
    int found = 0;
    if (f == NULL) {
        errno = saved;
        return 0;
    }
    char *line = NULL;
    size_t cap = 0;
    while (!found && getline(&line, &cap, f) > 0) {
        unsigned maj, min;
        if (sscanf(line, "%*u %*u %u:%u", &maj, &min) != 2 || makedev(maj, min) != dev)
            continue;
        char *sep = strstr(line, " - ");
        if (sep != NULL && strncmp(sep + 3, "fuse.daxfs ", 11) == 0)
            found = 1;
    }
    free(line);
    fclose(f);
    errno = saved;
    return found;
}

/* 1: daxfs, 0: definitely not, -1: cannot tell (not cached) */
static int classify_probe(ssize_t n, const char *buf)
{
    if (n >= 0)
        return n == (ssize_t)(sizeof PROBE_VALUE - 1) &&
               memcmp(buf, PROBE_VALUE, sizeof PROBE_VALUE - 1) == 0;
    switch (errno) {
    case ENODATA: case ENOTSUP: case ERANGE: case ENOSYS:
        return 0;
    default:
        return -1;
    }
}

static int fd_on_daxfs(int fd, const struct stat *st)
{
    int v = cache_lookup(st->st_dev);
    if (v >= 0)
        return v;
    if (!dev_is_daxfs_mount(st->st_dev)) {
        cache_store(st->st_dev, 0);
        return 0;
    }
    int saved = errno;
    char buf[64];
    v = classify_probe(fgetxattr(fd, PROBE_NAME, buf, sizeof buf), buf);
    errno = saved;
    if (v >= 0)
        cache_store(st->st_dev, v);
    return v;
}

static int path_on_daxfs(const char *path)
{
    struct stat st;
    int saved = errno;
    if (stat(path, &st) < 0) {
        errno = saved;
        return 0;
    }
    int v = cache_lookup(st.st_dev);
    if (v < 0 && !dev_is_daxfs_mount(st.st_dev)) {
        v = 0;
        cache_store(st.st_dev, v);
    }
    if (v < 0) {
        char buf[64];
        v = classify_probe(getxattr(path, PROBE_NAME, buf, sizeof buf), buf);
        if (v >= 0)
            cache_store(st.st_dev, v);
    }
    errno = saved;
    return v == 1;
}

static int fd_flags(int fd)
{
    int saved = errno;
    int fl = fcntl(fd, F_GETFL);
    errno = saved;
    return fl;
}

static int fail(int err)
{
    errno = err;
    return -1;
}

/* The request was for daxfs and fails with err: *ret is the call's -1. */
static int refuse(int *ret, int err)
{
    *ret = fail(err);
    return 1;
}

/* An fd the wrappers act on: open for I/O (not O_PATH) on a daxfs mount.
   Its status flags (>= 0) and its stat in *st, or -1 for any other fd. */
static int daxfs_fd(int fd, struct stat *st)
{
    int fl = fd_flags(fd);
    if (fl < 0 || (fl & O_PATH) || fstat(fd, st) < 0 || fd_on_daxfs(fd, st) != 1)
        return -1;
    return fl;
}

/* --- FICLONE / FICLONERANGE ---------------------------------------------- */
/* Returns 1 and sets *ret if the request was for daxfs, else 0. */
static int do_clone(int dst_fd, unsigned long request, void *arg, int *ret)
{
    struct stat dst_st, src_st;
    int dfl = fd_flags(dst_fd);
    if (dfl < 0 || (dfl & O_PATH) || fstat(dst_fd, &dst_st) < 0)
        return 0;                           /* the real ioctl says EBADF */
    int v = fd_on_daxfs(dst_fd, &dst_st);
    if (v == 0)
        return 0;

    uint64_t src_off = 0, len = 0, dst_off = 0;
    int src_fd;
    if (request == FICLONE) {
        src_fd = (int)(unsigned int)(uintptr_t)arg;
    } else {
        const struct file_clone_range *r = arg;
        if (!r) {
            if (v < 0)
                return 0;
            *ret = fail(EFAULT);
            return 1;
        }
        src_fd = (int)(unsigned int)r->src_fd;
        src_off = r->src_offset;
        len = r->src_length;
        dst_off = r->dest_offset;
    }
    int sfl = fd_flags(src_fd);
    if (sfl < 0 || (sfl & O_PATH) || fstat(src_fd, &src_st) < 0) {
        if (v < 0)
            return 0;
        *ret = fail(EBADF);
        return 1;
    }
    if (v < 0 && (src_st.st_dev != dst_st.st_dev || fd_on_daxfs(src_fd, &src_st) != 1))
        return 0;

    if (src_st.st_dev != dst_st.st_dev)
        *ret = fail(EXDEV);
    else if (S_ISDIR(src_st.st_mode) || S_ISDIR(dst_st.st_mode))
        *ret = fail(EISDIR);
    else if (!S_ISREG(src_st.st_mode) || !S_ISREG(dst_st.st_mode))
        *ret = fail(EINVAL);
    else if ((sfl & O_ACCMODE) == O_WRONLY || (dfl & O_ACCMODE) == O_RDONLY ||
             (dfl & O_APPEND))
        *ret = fail(EBADF);
    else if (!range_ok(src_off, len) || !range_ok(dst_off, len))
        *ret = fail(EINVAL);
    else {
        unsigned char req[REQUEST_SIZE];
        writeback(src_fd, src_off, len);
        writeback(dst_fd, dst_off, len);
        encode_request(req, OP_CLONE, &src_st, src_off, dst_off, len, src_fd);
        *ret = fsetxattr(dst_fd, CLONE_NAME, req, sizeof req, 0) < 0 ? -1 : 0;
    }
    return 1;
}

/* --- FIDEDUPERANGE ------------------------------------------------------- */
static int32_t dedupe_one(int src_fd, const struct stat *src_st, uint64_t src_off,
                          uint64_t len, struct file_dedupe_range_info *info)
{
    struct stat st;
    int dfd = (int)(unsigned int)info->dest_fd;
    int fl = fd_flags(dfd);
    if (fl < 0 || (fl & O_PATH) || fstat(dfd, &st) < 0)
        return -EBADF;
    if (info->reserved)
        return -EINVAL;
    if (!range_ok(info->dest_offset, len))
        return -EINVAL;
    if (st.st_dev != src_st->st_dev)
        return -EXDEV;
    if (S_ISDIR(st.st_mode))
        return -EISDIR;
    if (!S_ISREG(st.st_mode))
        return -EINVAL;
    if (len == 0)
        return FILE_DEDUPE_RANGE_SAME;

    unsigned char req[REQUEST_SIZE], res[RESULT_SIZE + 1];
    writeback(dfd, info->dest_offset, len);
    encode_request(req, OP_DEDUPE, src_st, src_off, info->dest_offset, len, src_fd);
    if (fsetxattr(dfd, DEDUPE_NAME, req, sizeof req, 0) < 0)
        /* setxattr needs write permission; the kernel's dedupe says EPERM */
        return errno == EACCES ? -EPERM : -errno;
    ssize_t n = fgetxattr(dfd, RESULT_NAME, res, sizeof res);
    if (n < 0)
        return -errno;
    if (n != RESULT_SIZE || get32(res + 4) != 0)
        return -EIO;
    int32_t status = (int32_t)get32(res);
    uint64_t done = get64(res + 8);
    if (status == FILE_DEDUPE_RANGE_SAME) {
        if (done > INT64_MAX)
            return -EIO;
        info->bytes_deduped = done;
        return status;
    }
    if (status == FILE_DEDUPE_RANGE_DIFFERS || (status < 0 && status >= -4095))
        return status;
    return -EIO;
}

static int do_dedupe(int src_fd, struct file_dedupe_range *arg, int *ret)
{
    struct stat src_st;
    int sfl = daxfs_fd(src_fd, &src_st);
    if (sfl < 0)
        return 0;
    if (!arg)
        return refuse(ret, EFAULT);
    /* as ioctl_file_dedupe_range: work on a copy, copy back on success */
    uint16_t count = arg->dest_count;
    size_t size = offsetof(struct file_dedupe_range, info) +
                  (size_t)count * sizeof(struct file_dedupe_range_info);
    long page = sysconf(_SC_PAGESIZE);
    if (size > (size_t)(page > 0 ? page : 4096))
        return refuse(ret, ENOMEM);
    struct file_dedupe_range *same = malloc(size);
    if (!same)
        return refuse(ret, ENOMEM);
    memcpy(same, arg, size);
    same->dest_count = count;

    uint64_t off = same->src_offset, len = same->src_length;
    int err = 0;
    if ((sfl & O_ACCMODE) == O_WRONLY || same->reserved1 || same->reserved2)
        err = EINVAL;
    else if (S_ISDIR(src_st.st_mode))
        err = EISDIR;
    else if (!S_ISREG(src_st.st_mode))
        err = EINVAL;
    else if (!range_ok(off, len) || off + len > (uint64_t)src_st.st_size)
        err = EINVAL;
    if (err) {
        free(same);
        *ret = fail(err);
        return 1;
    }
    if (len > DEDUPE_MAX_LEN)
        len = DEDUPE_MAX_LEN;
    for (unsigned i = 0; i < count; i++) {
        same->info[i].bytes_deduped = 0;
        same->info[i].status = FILE_DEDUPE_RANGE_SAME;
    }
    if (len)
        writeback(src_fd, off, len);
    for (unsigned i = 0; i < count; i++)
        same->info[i].status = dedupe_one(src_fd, &src_st, off, len, &same->info[i]);
    memcpy(arg, same, size);
    free(same);
    *ret = 0;
    return 1;
}

/* --- FS_IOC_FIEMAP ----------------------------------------------------------- */
static int do_fiemap(int fd, struct fiemap *fm, int *ret)
{
    struct stat st;
    if (daxfs_fd(fd, &st) < 0)
        return 0;
    *ret = 0;
    if (!fm)
        return refuse(ret, EFAULT);
    if (fm->fm_extent_count > UINT_MAX / sizeof(struct fiemap_extent))
        return refuse(ret, EINVAL);
    uint32_t max = fm->fm_extent_count, mapped = 0, flags = fm->fm_flags;
    uint64_t start = fm->fm_start, len = fm->fm_length;
    uint64_t end = start + len < start ? UINT64_MAX : start + len;
    unsigned char *buf = NULL;

    if (len == 0) {
        *ret = fail(EINVAL);
        goto out;
    }
    if (flags & ~(uint32_t)FIEMAP_FLAG_SYNC) {     /* as fiemap_prep */
        fm->fm_flags = flags & ~(uint32_t)FIEMAP_FLAG_SYNC;
        *ret = fail(EBADR);
        goto out;
    }
    if (flags & FIEMAP_FLAG_SYNC)
        writeback(fd, 0, 0);
    buf = malloc(XATTR_VALUE_MAX);
    if (!buf) {
        *ret = fail(ENOMEM);
        goto out;
    }
    int done = 0;
    while (!done && start < end) {
        char name[128];
        snprintf(name, sizeof name, FIEMAP_FMT, start, end - start, flags);
        ssize_t n = fgetxattr(fd, name, buf, XATTR_VALUE_MAX);
        if (n < 0) {
            *ret = -1;                  /* errno from the daemon */
            break;
        }
        uint32_t count = n >= FIEMAP_HEAD ? get32(buf) : 0;
        if (n < FIEMAP_HEAD || get32(buf + 4) != 0 || count > FIEMAP_PER_CALL ||
            (size_t)n != FIEMAP_HEAD + (size_t)count * FIEMAP_EXT) {
            *ret = fail(EIO);
            break;
        }
        uint64_t next = start;
        for (uint32_t i = 0; i < count && !done; i++) {
            const unsigned char *e = buf + FIEMAP_HEAD + (size_t)i * FIEMAP_EXT;
            uint64_t logical = get64(e), physical = get64(e + 8), length = get64(e + 16);
            uint32_t eflags = get32(e + 24);
            if (max == 0) {
                mapped++;
            } else {
                struct fiemap_extent *x = &fm->fm_extents[mapped++];
                memset(x, 0, sizeof *x);
                x->fe_logical = logical;
                x->fe_physical = physical;
                x->fe_length = length;
                x->fe_flags = eflags;
                if (mapped >= max)
                    done = 1;
            }
            if (eflags & FIEMAP_EXTENT_LAST)
                done = 1;
            next = logical + length < logical ? UINT64_MAX : logical + length;
        }
        if (done || count < FIEMAP_PER_CALL)
            break;
        if (next <= start) {            /* a daemon that does not move on */
            *ret = fail(EIO);
            break;
        }
        start = next;
    }
out:
    free(buf);
    fm->fm_mapped_extents = mapped;
    return 1;
}

/* --- the interposed functions -------------------------------------------- */
EXPORT int ioctl(int fd, unsigned long request, ...)
{
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);

    int saved = errno, ret = 0, handled = 0;
    switch (request) {
    case FICLONE:
    case FICLONERANGE:
        handled = do_clone(fd, request, arg, &ret);
        break;
    case FIDEDUPERANGE:
        handled = do_dedupe(fd, arg, &ret);
        break;
    case FS_IOC_FIEMAP:
        handled = do_fiemap(fd, arg, &ret);
        break;
    default:
        break;
    }
    if (handled)
        return ret;
    errno = saved;
    ioctl_fn real = REAL(ioctl_fn, ioctl);
    if (!real)
        return fail(ENOSYS);
    return real(fd, request, arg);
}

/* copy_file_range between files of one daxfs mount becomes a clone when the
 * offsets are block-aligned and the length is too or the range ends at the
 * source's EOF; an unaligned length is shortened to whole blocks (the
 * caller loops for the rest), as XFS does with REMAP_FILE_CAN_SHORTEN.  If
 * the clone fails for any reason the real copy_file_range decides. */
static int clone_copy(int fd_in, __off64_t *off_in, int fd_out, __off64_t *off_out,
                      size_t len, ssize_t *result)
{
    struct stat in_st, out_st;
    int ifl = fd_flags(fd_in), ofl = fd_flags(fd_out);
    if (ifl < 0 || ofl < 0 || ((ifl | ofl) & O_PATH) ||
        (ifl & O_ACCMODE) == O_WRONLY || (ofl & O_ACCMODE) == O_RDONLY ||
        (ofl & O_APPEND))
        return 0;
    if (fstat(fd_in, &in_st) < 0 || fstat(fd_out, &out_st) < 0)
        return 0;
    if (!S_ISREG(in_st.st_mode) || !S_ISREG(out_st.st_mode) ||
        in_st.st_dev != out_st.st_dev)
        return 0;
    int v = fd_on_daxfs(fd_out, &out_st);
    if (v < 0)
        v = fd_on_daxfs(fd_in, &in_st);
    if (v != 1)
        return 0;
    __off64_t src = off_in ? *off_in : lseek(fd_in, 0, SEEK_CUR);
    __off64_t dst = off_out ? *off_out : lseek(fd_out, 0, SEEK_CUR);
    if (src < 0 || dst < 0 || src % BLOCK || dst % BLOCK || src >= in_st.st_size)
        return 0;
    uint64_t n = (uint64_t)(in_st.st_size - src);
    if (len < n)
        n = len;
    if ((uint64_t)src + n != (uint64_t)in_st.st_size)
        n &= ~(BLOCK - 1);
    if (n == 0 || n > SSIZE_MAX || !range_ok((uint64_t)dst, n))
        return 0;
    unsigned char req[REQUEST_SIZE];
    writeback(fd_in, (uint64_t)src, n);
    writeback(fd_out, (uint64_t)dst, n);
    encode_request(req, OP_CLONE, &in_st, (uint64_t)src, (uint64_t)dst, n, fd_in);
    if (fsetxattr(fd_out, CLONE_NAME, req, sizeof req, 0) < 0)
        return 0;
    if (off_in)
        *off_in += (__off64_t)n;
    else
        lseek(fd_in, (__off64_t)n, SEEK_CUR);
    if (off_out)
        *off_out += (__off64_t)n;
    else
        lseek(fd_out, (__off64_t)n, SEEK_CUR);
    *result = (ssize_t)n;
    return 1;
}

EXPORT ssize_t copy_file_range(int fd_in, __off64_t *off_in, int fd_out,
                               __off64_t *off_out, size_t len, unsigned int flags)
{
    int saved = errno;
    ssize_t result;
    if (flags == 0 && len > 0 && clone_copy(fd_in, off_in, fd_out, off_out, len, &result))
        return result;
    errno = saved;
    cfr_fn real = REAL(cfr_fn, copy_file_range);
    if (!real)
        return fail(ENOSYS);
    return real(fd_in, off_in, fd_out, off_out, len, flags);
}

static int fake_xfs_enabled(void)
{
    const char *v = getenv("DAXFS_FAKE_XFS");
    return v && strcmp(v, "1") == 0;
}

static int fd_is_daxfs_for_statfs(int fd)
{
    struct stat st;
    int saved = errno;
    int v = fstat(fd, &st) == 0 ? fd_on_daxfs(fd, &st) : 0;
    errno = saved;
    return v == 1;
}

/* statfs, statfs64, fstatfs, fstatfs64: the real call, and with
   DAXFS_FAKE_XFS=1 a daxfs mount's f_type reads as XFS's.  ON_DAXFS is how
   the argument (a path or an fd) is asked whether it is on daxfs. */
#define STATFS_WRAPPER(name, argtype, buftype, on_daxfs)                     \
    EXPORT int name(argtype arg, struct buftype *buf)                        \
    {                                                                        \
        name##_fn real = REAL(name##_fn, name);                              \
        if (!real)                                                           \
            return fail(ENOSYS);                                             \
        int r = real(arg, buf);                                              \
        if (r == 0 && buf->f_type == FUSE_MAGIC && fake_xfs_enabled() &&     \
            on_daxfs(arg))                                                   \
            buf->f_type = XFS_MAGIC;                                         \
        return r;                                                            \
    }

STATFS_WRAPPER(statfs, const char *, statfs, path_on_daxfs)
STATFS_WRAPPER(statfs64, const char *, statfs64, path_on_daxfs)
STATFS_WRAPPER(fstatfs, int, statfs, fd_is_daxfs_for_statfs)
STATFS_WRAPPER(fstatfs64, int, statfs64, fd_is_daxfs_for_statfs)
