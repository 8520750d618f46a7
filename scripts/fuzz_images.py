#!/usr/bin/env python3
"""Run the image fuzzer (tests/support/image_fuzz.py, whose docstring says what it
does and promises) by hand, as long as you like: `fuzz_images.py --help`."""

import os
import sys

_SUPPORT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "tests", "support")
sys.path.insert(0, _SUPPORT)

from image_fuzz import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
