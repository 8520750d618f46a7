"""The `daxfs` command: dispatches `daxfs SUBCOMMAND ...` to the module
`daxfs.cli.SUBCOMMAND`, whose `main(argv)` does the work.

Each subcommand lives in its own module; this one only knows their names.
"""

import importlib
import sys

COMMANDS = {
    "mkfs": "make a new filesystem image",
    "check": "verify (and with --repair, mend) an image",
    "mount": "mount an image with FUSE",
    "umount": "unmount a daxfs mount",
    "exec": "run a program with the reflink/dedupe/FIEMAP library preloaded",
    "reflink": "share a file's extents with another file (clone)",
    "dedupe": "share identical ranges between files after comparing them",
    "poison": "inject or list media errors (bad ranges) on the device",
    "map": "print (and draw) the physical layout of the device, like GETFSMAP",
}


def usage() -> str:
    lines = ["usage: daxfs COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<8} {text}" for name, text in COMMANDS.items()]
    lines += ["", "`daxfs COMMAND --help` says what a command does, its options and exit status."]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"daxfs: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(f"daxfs.cli.{name}")
    return module.main(rest)


if __name__ == "__main__":
    sys.exit(main())
