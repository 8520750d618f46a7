#!/usr/bin/env python3
"""Kill a daxfs daemon at random moments, again and again (the crash soak
of tests/support/crash_soak.py, whose docstring is the manual), by hand."""
import os
import runpy

runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                            "support", "crash_soak.py"), run_name="__main__")
