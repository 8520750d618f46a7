"""Reading /proc/self/mountinfo: the one place that knows its escaping.

mountinfo writes space, tab, newline and backslash in paths as a backslash
and three octal digits (\\040 ...); `unescape` turns a field back into the
path.  Used by the mount commands, the control protocol's device lookup
and the benchmark.
"""


import re

_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """A mountinfo path field as the path it names."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)
