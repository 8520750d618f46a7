#!/usr/bin/env bash
# Sets up everything daxfs needs on a fresh Debian machine (run as root):
# Debian packages, a virtual environment in .venv with the Python packages,
# and the LD_PRELOAD library compiled from source.  Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBS="fuse3 libfuse3-dev pkg-config gcc make python3-venv python3-dev attr acl xfsprogs duperemove rsync sqlite3 git e2fsprogs fio"
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
.venv/bin/pip install -q -e ".[test]"

if [ -f daxfs/control/preload/Makefile ]; then
  make -s -C daxfs/control/preload
fi
echo "setup done: .venv ready"
