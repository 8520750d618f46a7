"""daxfs: a DAX-style filesystem in user space, served through FUSE.

Every byte lives in one memory-mapped image file that plays a persistent
memory device.  See docs/format.md for the on-disk format and README.md for
the tour.
"""

__version__ = "0.1.0"
