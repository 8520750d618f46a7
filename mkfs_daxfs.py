#!/usr/bin/env python3
"""mkfs_daxfs.py IMAGE --size SIZE [--no-rmap]: make a daxfs image (the same
as `daxfs mkfs`)."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from daxfs.cli.mkfs import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="mkfs_daxfs.py"))
