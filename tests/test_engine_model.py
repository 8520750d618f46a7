"""Random sequences of filesystem API calls against a model held in memory.

Create, write at random offsets and lengths, truncate, clone, dedupe, CoW
writes into shared extents, unlink, rename, xattrs and reopen; after every
step the full check runs and every file's bytes are compared with the model.
"""

import os
import stat

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from daxfs.engine.errors import DaxfsError
from daxfs.engine.fs import Filesystem
from daxfs.engine.mkfs import mkfs
from engine_helpers import assert_clean

BS = 4096
NAMES = [b"a", b"b", b"c", b"d", b"e"]
names = st.sampled_from(NAMES)
blocks = st.integers(0, 12)


def pattern(seed: int, n: int) -> bytes:
    return bytes((seed * 7 + i * 13) % 251 for i in range(n))


class FsModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="daxfs-model-")
        self.path = os.path.join(self.dir, "m.img")
        mkfs(self.path, 24 << 20)
        self.fs = Filesystem.open(self.path)
        self.files: dict[bytes, bytearray] = {}
        self.xattrs: dict[bytes, dict] = {}

    def teardown(self):
        if self.fs.vol is not None:
            self.fs.close()
        os.unlink(self.path)
        os.rmdir(self.dir)

    def ino(self, name):
        return self.fs.lookup(1, name).ino

    @rule(name=names)
    def create(self, name):
        if name in self.files:
            return
        self.fs.mknod(1, name, stat.S_IFREG | 0o644, 0, 0)
        self.files[name] = bytearray()
        self.xattrs[name] = {}

    @precondition(lambda self: self.files)
    @rule(data=st.data(), off=st.integers(0, 50000), n=st.integers(1, 20000),
          seed=st.integers(0, 255))
    def write(self, data, off, n, seed):
        name = data.draw(st.sampled_from(sorted(self.files)))
        buf = pattern(seed, n)
        assert self.fs.write(self.ino(name), off, buf) == n
        f = self.files[name]
        if len(f) < off:
            f.extend(bytes(off - len(f)))
        f[off:off + n] = buf

    @precondition(lambda self: self.files)
    @rule(data=st.data(), size=st.integers(0, 60000))
    def truncate(self, data, size):
        name = data.draw(st.sampled_from(sorted(self.files)))
        self.fs.setattr(self.ino(name), size=size)
        f = self.files[name]
        if size < len(f):
            del f[size:]
        else:
            f.extend(bytes(size - len(f)))

    @precondition(lambda self: self.files)
    @rule(data=st.data(), sblk=blocks, dblk=blocks, nblk=st.integers(0, 8))
    def clone(self, data, sblk, dblk, nblk):
        src = data.draw(st.sampled_from(sorted(self.files)))
        dst = data.draw(st.sampled_from(sorted(self.files)))
        s, d = self.files[src], self.files[dst]
        soff, doff, length = sblk * BS, dblk * BS, nblk * BS
        count = (len(s) - soff) if length == 0 else length
        if length == 0 and soff == len(s):
            assert self.fs.clone_range(self.ino(src), soff, self.ino(dst), doff, 0) == 0
            return
        valid = soff < len(s) and soff + count <= len(s)
        if valid and length == 0 and doff + count < len(d) and count % BS:
            valid = False
        if valid and src == dst:
            bcount = -(-count // BS) * BS
            if doff + bcount > soff and doff < soff + bcount:
                valid = False
        if not valid:
            try:
                self.fs.clone_range(self.ino(src), soff, self.ino(dst), doff, length)
            except DaxfsError:
                return
            raise AssertionError("invalid clone accepted")
        got = self.fs.clone_range(self.ino(src), soff, self.ino(dst), doff, length)
        assert got == count
        piece = bytes(s[soff:soff + count])
        if len(d) < doff:
            d.extend(bytes(doff - len(d)))
        d[doff:doff + count] = piece

    @precondition(lambda self: len(self.files) >= 2)
    @rule(data=st.data(), sblk=blocks, dblk=blocks, nblk=st.integers(1, 6))
    def dedupe(self, data, sblk, dblk, nblk):
        src = data.draw(st.sampled_from(sorted(self.files)))
        dst = data.draw(st.sampled_from(sorted(self.files)))
        s, d = self.files[src], self.files[dst]
        soff, doff, n = sblk * BS, dblk * BS, nblk * BS
        if src == dst or soff + n > len(s) or doff + n > len(d):
            return
        if data.draw(st.booleans()):      # make them equal first, the way dedupe is used
            self.fs.write(self.ino(dst), doff, bytes(s[soff:soff + n]))
            d[doff:doff + n] = s[soff:soff + n]
        [res] = self.fs.dedupe_range(self.ino(src), soff, n, [(self.ino(dst), doff)])
        same = s[soff:soff + n] == d[doff:doff + n]
        assert (res.status == 0 and res.bytes_deduped == n) if same else res.status == 1

    @precondition(lambda self: self.files)
    @rule(data=st.data())
    def unlink(self, data):
        name = data.draw(st.sampled_from(sorted(self.files)))
        ino = self.ino(name)
        self.fs.unlink(1, name)
        self.fs.forget(ino)
        del self.files[name]
        del self.xattrs[name]

    @precondition(lambda self: self.files)
    @rule(data=st.data(), new=names)
    def rename(self, data, new):
        old = data.draw(st.sampled_from(sorted(self.files)))
        victim = None
        if new in self.files and new != old:
            victim = self.ino(new)
        self.fs.rename(1, old, 1, new)
        if victim:
            self.fs.forget(victim)
        if new != old:
            self.files[new] = self.files.pop(old)
            self.xattrs[new] = self.xattrs.pop(old)

    @precondition(lambda self: self.files)
    @rule(data=st.data(), key=st.sampled_from([b"user.k1", b"user.k2"]),
          n=st.sampled_from([0, 5, 160, 161, 5000]))
    def setxattr(self, data, key, n):
        name = data.draw(st.sampled_from(sorted(self.files)))
        value = pattern(n, n)
        self.fs.setxattr(self.ino(name), key, value)
        self.xattrs[name][key] = value

    @precondition(lambda self: any(self.xattrs.values()))
    @rule(data=st.data())
    def removexattr(self, data):
        name = data.draw(st.sampled_from(sorted(n for n in self.xattrs if self.xattrs[n])))
        key = data.draw(st.sampled_from(sorted(self.xattrs[name])))
        self.fs.removexattr(self.ino(name), key)
        del self.xattrs[name][key]

    @rule()
    def reopen(self):
        self.fs.close()
        self.fs = Filesystem.open(self.path)

    @invariant()
    def matches_model(self):
        assert_clean(self.fs)
        listed = sorted(e.name for e in self.fs.readdir(1, 0))[2:] if False else \
            sorted(e.name for e in self.fs.readdir(1, 0) if e.name not in (b".", b".."))
        assert listed == sorted(self.files)
        for name, content in self.files.items():
            a = self.fs.lookup(1, name)
            assert a.size == len(content)
            assert self.fs.read(a.ino, 0, len(content) + 10) == bytes(content), name
            assert sorted(self.fs.listxattr(a.ino)) == sorted(self.xattrs[name])
            for k, v in self.xattrs[name].items():
                assert self.fs.getxattr(a.ino, k) == v


FsModel.TestCase.settings = settings(max_examples=int(os.environ.get("DAXFS_MODEL_EXAMPLES", 40)),
                                     stateful_step_count=30, deadline=None,
                                     suppress_health_check=list(HealthCheck))
TestFsModel = FsModel.TestCase
