"""`python -m daxfs.cli`: the `daxfs` command."""

import sys

from daxfs.cli import main

sys.exit(main())
