#!/usr/bin/env python3
"""Damage copies of a populated image at random, many times, and hold check,
repair and mount to their promises: the image fuzzer of
tests/support/image_fuzz.py (its docstring is the manual) run by hand."""
import os
import runpy

runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                            "support", "image_fuzz.py"), run_name="__main__")
