"""Shared test fixtures: fresh images, real kernel mounts, and the rules every
mount in the tests follows.

* `image`: a fresh 256 MiB image (daxfs.engine.mkfs.mkfs, with the rmap btree).
* `mnt`: an empty directory that any user can reach (the permission tests
  run commands as uid 65534, and pytest's own tmp dirs are 0700).
* `mounted`: `image` mounted at `mnt` with the real `daxfs mount` command;
  on the way out the mount is always taken down (fusermount3 -u, then
  umount -l, then, if the daemon still hangs, the FUSE connection is
  aborted), the daemon is waited for, its log must hold no traceback, and
  `daxfs check IMAGE` must find the image clean.
* `mount_image(...)`: the same as a context manager, for tests that mount
  more than once (persistence) or with options.

Every subprocess runs with a timeout (`run`, `daxfs`).

Tiers (markers, registered in pyproject.toml; README says how to pick):

* `engine`: no mount. The engine, fsck and the tools on an image; runs
  anywhere Python does. A test is put here unless it mounts.
* `mount`: mounts through the kernel (root and /dev/fuse): it asks for a
  mount fixture (`mnt`, `mounted`, `mount_root`, `installed_helpers`), or its
  code, or a helper of its module it calls, mounts. An `engine` test that
  tries to mount fails at once (`_tier_guard`), so the tiers stay true.
* `slow`: the long scenarios (`SLOW_MODULES`: fsx, soaks, fuzzing, crash
  loops), in either tier; `-m "not slow"` is the quick run.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

MiB = 1 << 20
GiB = 1 << 30
IMAGE_SIZE = 256 * MiB
CMD_TIMEOUT = 120
UNMOUNT_TIMEOUT = 60

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:          # also without `pip install -e .`
    sys.path.insert(0, str(ROOT))

from daxfs import host  # noqa: E402


def run(cmd, *, timeout=CMD_TIMEOUT, check=False, cwd=None, input=None, env=None):
    """Run a command with a timeout; text output captured."""
    _tier_guard(cmd)
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True,
                          timeout=timeout, check=check, cwd=cwd, input=input, env=env)


def daxfs(*args, timeout=CMD_TIMEOUT):
    """Run the `daxfs` command (this checkout's) with a timeout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return run([sys.executable, "-m", "daxfs.cli", *args], timeout=timeout, env=env)


def make_image(path, size=IMAGE_SIZE, *, dup=True) -> Path:
    """A fresh image (duplicated metadata, mkfs's default, unless not `dup`)."""
    from daxfs.engine.mkfs import mkfs
    mkfs(str(path), size, rmap=True, dup=dup)
    return Path(path)


def check_image(image) -> None:
    """`daxfs check IMAGE` must exit 0."""
    res = daxfs("check", image, timeout=300)
    assert res.returncode == 0, f"daxfs check {image} failed:\n{res.stdout}\n{res.stderr}"


# ---------------------------------------------------------------- mounts

def mount_source(mnt) -> str | None:
    """The mount source at `mnt`, or None if nothing is mounted there."""
    found = host.mount_at(mnt)
    return None if found is None else found.source


def force_unmount(mnt, pids=()) -> None:
    """Take down whatever is mounted at `mnt` and wait for the daemons
    (daxfs.host.force_unmount); a daemon that had to be killed fails the
    test."""
    killed = host.force_unmount(mnt, pids, UNMOUNT_TIMEOUT)
    if killed:
        raise AssertionError(f"daemon(s) {killed} did not exit after unmount of {mnt}")


def assert_clean_log(log: Path) -> None:
    text = log.read_text(errors="replace") if log.exists() else ""
    bad = [ln for ln in text.splitlines() if "Traceback" in ln or " ERROR " in ln]
    assert not bad, f"daemon log {log} has errors:\n{text[-4000:]}"


@contextlib.contextmanager
def mount_image(image, mnt, options: str | None = None, log: Path | None = None,
                check_log: bool = True):
    """Mount with `daxfs mount`; always unmounted on the way out."""
    log = Path(log or f"{image}.mount.log")
    args = ["mount", image, mnt, "--log", log]
    if options:
        args += ["-o", options]
    res = daxfs(*args, timeout=90)
    pids = host.daemon_pids(image) if mount_source(mnt) else []
    try:
        assert res.returncode == 0, f"daxfs mount failed: {res.stderr}"
        assert mount_source(mnt) is not None, "daxfs mount returned 0 but nothing is mounted"
        assert pids, "no daemon holds the image"
        yield Path(mnt)
    finally:
        force_unmount(mnt, pids)
    if check_log:
        assert_clean_log(log)


# -------------------------------------------------------------- tiers

MOUNT_FIXTURES = {"mnt", "mounted", "mount_root", "installed_helpers"}
# code that mounts: the helpers above, the daxfs command's mount, mount(8)
_MOUNTS = re.compile(r"\bmount_image\(|\bmounted\b|[\"']mount[\"']\s*,|\bmount\.fuse")
# the long scenarios (measured: each module takes 20 s or more of a full run)
SLOW_MODULES = {"test_soak", "test_crash", "test_fuzz", "test_fsx", "test_damaged_mount",
                "test_concurrency", "test_dup_repair", "test_salvage"}
_current_tier: list[str] = []


def _mounting_helpers(module) -> set[str]:
    """Names of the module's own functions whose code mounts."""
    names = set()
    for name, obj in vars(module).items():
        if inspect.isfunction(obj) and obj.__module__ == module.__name__ \
                and not name.startswith("test_"):
            try:
                if _MOUNTS.search(inspect.getsource(obj)):
                    names.add(name)
            except (OSError, TypeError):
                pass
    return names


def _code_mounts(func, helpers: set[str]) -> bool:
    try:
        src = inspect.getsource(func)
    except (OSError, TypeError):
        return True                       # cannot tell: not in the engine tier
    return bool(_MOUNTS.search(src)) or any(re.search(rf"\b{h}\(", src) for h in helpers)


def _mounts(item, helpers: set[str]) -> bool:
    """Does the test, or a fixture it uses (however indirectly), mount?"""
    names = set(getattr(item, "fixturenames", ()))
    if MOUNT_FIXTURES & names:
        return True
    info = getattr(item, "_fixtureinfo", None)
    for name in names:
        for fdef in (info.name2fixturedefs.get(name, ()) if info else ()):
            if fdef.baseid and _code_mounts(fdef.func, helpers):   # the project's fixtures only
                return True
    return _code_mounts(getattr(item, "function", None), helpers)


def pytest_collection_modifyitems(config, items):
    helpers_of: dict = {}
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and module not in helpers_of:
            helpers_of[module] = _mounting_helpers(module)
        mounts = _mounts(item, helpers_of.get(module, set()))
        item.add_marker(pytest.mark.mount if mounts else pytest.mark.engine)
        if module is not None and module.__name__ in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _tier(request):
    _current_tier.append("engine" if request.node.get_closest_marker("engine") else "mount")
    try:
        yield
    finally:
        _current_tier.pop()


def _tier_guard(cmd) -> None:
    """An engine-tier test must not mount: it would need root and /dev/fuse
    where the engine tier promises neither."""
    words = [os.path.basename(str(c)) for c in cmd]
    mounting = words[:1] == ["mount"] or words[0].startswith("mount.fuse") or any(
        w in ("daxfs", "daxfs.cli") and words[i + 1:i + 2] == ["mount"]
        for i, w in enumerate(words[:3]))
    if mounting and _current_tier and _current_tier[-1] == "engine":
        pytest.fail("a test in the engine tier mounts: give it a mount fixture "
                    "(tests/conftest.py, Tiers)", pytrace=False)


# -------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def mount_root():
    """A directory every user may traverse, holding the mountpoints."""
    d = tempfile.mkdtemp(prefix="daxfs-test-")
    os.chmod(d, 0o755)
    _session_mount_roots.append(d + "/")
    yield Path(d)
    for sub in Path(d).iterdir():
        if mount_source(sub) is not None:
            force_unmount(sub)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def mnt(mount_root, request):
    d = Path(tempfile.mkdtemp(prefix="mnt-", dir=mount_root))
    os.chmod(d, 0o755)
    return d


@pytest.fixture
def image(tmp_path):
    return make_image(tmp_path / "daxfs.img")


MOUNT_HELPERS = (Path("/sbin/mount.fuse.daxfs"), Path("/sbin/umount.fuse.daxfs"))


@pytest.fixture
def installed_helpers():
    """This checkout's mount(8) and umount(8) helpers installed in /sbin
    (`daxfs mount --install-helper`) for the test; whatever was there
    before is put back afterwards (other checkouts share /sbin)."""
    saved = {p: (p.read_bytes() if p.exists() else None) for p in MOUNT_HELPERS}
    res = daxfs("mount", "--install-helper", timeout=60)
    assert res.returncode == 0, res.stderr
    try:
        yield MOUNT_HELPERS
    finally:
        for p, data in saved.items():
            if data is None:
                p.unlink(missing_ok=True)
            else:
                p.write_bytes(data)
                p.chmod(0o755)


@pytest.fixture
def mounted(image, mnt):
    with mount_image(image, mnt) as path:
        yield path
    check_image(image)


@pytest.fixture(scope="session", autouse=True)
def _no_fuse_left_behind(tmp_path_factory):
    """No daxfs mount of this session (its image under this session's
    tmp dir, or its mountpoint under mount_root) may outlive it.  Mounts of
    other sessions running at the same time are none of our business."""
    base = str(tmp_path_factory.getbasetemp())
    yield
    left = [(m.mountpoint, m.source) for m in host.mounts()
            if m.is_daxfs
            and ((host.image_of_source(m.source) or "").startswith(base + "/")
                 or m.mountpoint.startswith(tuple(_session_mount_roots)))]
    for mnt, _src in left:
        force_unmount(mnt)
    assert not left, f"daxfs mounts left behind: {left}"


_session_mount_roots: list[str] = []
