#!/usr/bin/env bash
# Sets up everything daxfs needs on a fresh Debian machine (run as root):
# Debian packages, a virtual environment in .venv with the Python packages
# (pyfuse3 built from its sdist with third_party/pyfuse3's patch), and the
# LD_PRELOAD library compiled from source.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS="fuse3 libfuse3-dev pkg-config gcc make patch python3-venv python3-dev attr acl xfsprogs duperemove rsync sqlite3 git e2fsprogs fio"
missing=""
for p in $DEBS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq $missing >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null

# --- pyfuse3: the pinned release plus daxfs's patch (third_party/pyfuse3/README.md)
PYFUSE3_SDIST=pyfuse3-3.5.0.tar.gz
PYFUSE3_SHA256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
PYFUSE3_PATCH=third_party/pyfuse3/pyfuse3-3.5.0-daxfs.patch
# Everything the sdist's build backend pulls in, pinned (Cython generates the C
# code of the patched module, so its version decides what gets compiled).
PYFUSE3_BUILD_PINS="Cython==3.2.4
setuptools==84.2.1
setuptools-scm==10.3.4
vcs-versioning==2.6.0
packaging==26.4"
# The patch sets the version (PKG-INFO): 3.5.0 plus a local label.
PYFUSE3_WANT=$(sed -n 's/^+Version: //p' "$PYFUSE3_PATCH" | head -n 1)
PATCH_SHA=$(sha256sum "$PYFUSE3_PATCH" | cut -d' ' -f1)
STAMP=.venv/.pyfuse3-patch.sha256     # sha256 of the patch the installed binding was built with

patched_pyfuse3_installed() {
  [ "$(cat "$STAMP" 2>/dev/null)" = "$PATCH_SHA" ] || return 1
  .venv/bin/python -I - "$PYFUSE3_WANT" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
import pyfuse3
need = {"fallocate", "copy_file_range", "lseek", "want_capability", "start_temporary_worker"}
ok = version("pyfuse3") == sys.argv[1] and need <= getattr(pyfuse3, "FEATURES", frozenset())
sys.exit(0 if ok else 1)
EOF
}

log=""
if ! patched_pyfuse3_installed; then
  work=$(mktemp -d /tmp/daxfs-pyfuse3.XXXXXX)
  log=$(mktemp /tmp/daxfs-pyfuse3-setup.XXXXXX.log)
  fail() { rm -rf "$work"; echo "setup: $1 failed (see $log)" >&2; exit 1; }
  printf '%s\n' "$PYFUSE3_BUILD_PINS" > "$work/build-pins.txt"
  [ -n "$PYFUSE3_WANT" ] || fail "reading the version from $PYFUSE3_PATCH"
  .venv/bin/pip download --no-deps --no-binary :all: --build-constraint "$work/build-pins.txt" \
      -d "$work" pyfuse3==3.5.0 >>"$log" 2>&1 \
    || fail "downloading the pyfuse3 3.5.0 sdist"
  echo "$PYFUSE3_SHA256  $work/$PYFUSE3_SDIST" | sha256sum -c - >>"$log" 2>&1 \
    || fail "checking the sha256 of $PYFUSE3_SDIST"
  tar --no-same-owner -C "$work" -xzf "$work/$PYFUSE3_SDIST" >>"$log" 2>&1 \
    || fail "unpacking $PYFUSE3_SDIST"
  src=$work/pyfuse3-3.5.0
  patch -d "$src" -p1 --batch --forward --fuzz=0 < "$PYFUSE3_PATCH" >>"$log" 2>&1 \
    || fail "applying $PYFUSE3_PATCH"
  # The shipped C file is generated from the unpatched .pyx: never compile it.
  rm -f "$src/src/pyfuse3/__init__.c"
  .venv/bin/pip wheel --no-deps --build-constraint "$work/build-pins.txt" -w "$work/wheel" "$src" \
      >>"$log" 2>&1 \
    || fail "building the patched pyfuse3"
  # Its dependency (trio) comes with daxfs's own below.
  .venv/bin/pip install --no-deps --force-reinstall "$work"/wheel/pyfuse3-*.whl >>"$log" 2>&1 \
    || fail "installing the patched pyfuse3"
  echo "$PATCH_SHA" > "$STAMP"
  rm -rf "$work"
fi

# pyproject pins pyfuse3==3.5.0, which 3.5.0+daxfs.N satisfies: pip keeps it.
.venv/bin/pip install -q -e ".[test]"
if ! patched_pyfuse3_installed; then
  [ -n "$log" ] || log=$(mktemp /tmp/daxfs-pyfuse3-setup.XXXXXX.log)
  .venv/bin/python -I -c 'import importlib.metadata as m, pyfuse3; print(m.version("pyfuse3"), pyfuse3.__file__, getattr(pyfuse3, "FEATURES", None))' >>"$log" 2>&1 || true
  echo "setup: importing the patched pyfuse3 $PYFUSE3_WANT failed (see $log)" >&2
  exit 1
fi
[ -z "$log" ] || rm -f "$log"

if [ -f daxfs/control/preload/Makefile ]; then
  make -s -C daxfs/control/preload
fi
echo "setup done: .venv ready"
