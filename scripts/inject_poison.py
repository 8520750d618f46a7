#!/usr/bin/env python3
"""inject_poison.py TARGET --offset BYTES --length BYTES | --metadata KIND

Mark a range of the device bad (a media error), the same as
`daxfs poison inject`: TARGET is an image, a mountpoint, or a file on a
daxfs mount (then offsets are in the file)."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from daxfs.cli.poison import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["inject"] + sys.argv[1:]))
