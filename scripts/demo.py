#!/usr/bin/env python3
"""The daxfs demo (the project's main job): make an image, mount it through
the kernel, use it with ordinary programs, unmount it and check it.

    .venv/bin/python scripts/demo.py [--keep DIR]

Each step prints the command it runs and what it printed, so the output
reads as a transcript.  Every command has a timeout and the mount is taken
down in `finally`, whatever happens.  Later sections (reflink, dedupe,
poison) are added by the engineers who own those features: add a function
to SECTIONS that takes the Demo and uses `demo.sh(...)`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 120
sys.path.insert(0, str(ROOT))

from daxfs import host  # noqa: E402


class Demo:
    def __init__(self, workdir: Path):
        self.dir = workdir
        self.image = workdir / "demo.img"
        self.mnt = workdir / "mnt"
        self.log = workdir / "daemon.log"
        self.env = dict(os.environ)
        self.env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT),
                                                               self.env.get("PYTHONPATH")]))

    def run(self, cmd, *, check=True, cwd=None, shell=False) -> subprocess.CompletedProcess:
        shown = cmd if shell else " ".join(str(c) for c in cmd)
        print(f"$ {shown}", flush=True)
        res = subprocess.run(cmd if shell else [str(c) for c in cmd], shell=shell,
                             cwd=cwd or self.dir, env=self.env, capture_output=True,
                             text=True, timeout=TIMEOUT)
        for text in (res.stdout, res.stderr):
            if text.strip():
                print("  " + text.rstrip().replace("\n", "\n  "), flush=True)
        if check and res.returncode != 0:
            raise SystemExit(f"demo: command failed with status {res.returncode}: {shown}")
        return res

    def daxfs(self, *args, check=True):
        return self.run([sys.executable, "-m", "daxfs.cli", *args], check=check)

    def sh(self, script: str, check=True):
        """Run a shell command line inside the mount."""
        return self.run(script, shell=True, cwd=self.mnt, check=check)

    def mounted(self) -> bool:
        return host.is_mounted(self.mnt)


def section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def basics(demo: Demo) -> None:
    section("files, directories and links through the kernel")
    demo.sh("mkdir -p docs/notes && echo 'hello from daxfs' > docs/hello.txt")
    demo.sh("head -c 3000000 /dev/urandom > docs/random.bin && "
            "sha256sum docs/random.bin > ../random.sha256")
    demo.sh("cp -a /usr/share/common-licenses docs/ && ls docs/common-licenses | head -5")
    demo.sh("ln docs/hello.txt hard-link && ln -s docs/hello.txt sym-link")
    demo.sh("setfattr -n user.colour -v blue docs/hello.txt && "
            "getfattr -d docs/hello.txt")
    demo.sh("truncate -s 1G sparse.img && du -h --apparent-size sparse.img && du -h sparse.img")
    demo.sh("ls -lR --time-style=+ . | head -40")
    demo.sh("cat sym-link && stat -c '%n: inode %i, %h links, mode %A' docs/hello.txt")
    demo.sh("df -h .")


def reflink_and_dedupe(demo: Demo) -> None:
    section("reflink: cp --reflink=always shares extents (through the LD_PRELOAD library)")
    demo.sh("head -c 64M /dev/urandom > big.bin && sync && df --output=used -B4K . | tail -1")
    demo.daxfs("exec", "--", "cp", "--reflink=always", str(demo.mnt / "big.bin"),
               str(demo.mnt / "big-copy.bin"))
    demo.sh("df --output=used -B4K . | tail -1   # used blocks hardly moved")
    demo.daxfs("exec", "--", "filefrag", "-v", str(demo.mnt / "big-copy.bin"))
    section("copy-on-write: one byte written into the copy takes one new block")
    demo.sh("printf X | dd of=big-copy.bin bs=1 seek=1000000 conv=notrunc status=none && "
            "sync && cmp big.bin big-copy.bin; true")
    section("dedupe: two files written separately, then shared by duperemove")
    demo.sh("mkdir dups && head -c 16M /dev/urandom > dups/a && cp --reflink=never dups/a dups/b "
            "&& sync && df --output=used -B4K . | tail -1")
    demo.daxfs("exec", "--", "duperemove", "-dr", "-q", str(demo.mnt / "dups"))
    demo.sh("sync && df --output=used -B4K . | tail -1   # 16 MiB fewer blocks used")
    demo.sh("cmp dups/a dups/b && echo 'contents unchanged'")


def poison(demo: Demo) -> None:
    section("poison: a media error in a shared block reaches every owner (rmap lookup)")
    demo.sh("head -c 64K /dev/urandom > original && sync")
    demo.daxfs("reflink", str(demo.mnt / "original"), str(demo.mnt / "clone"))
    demo.run([sys.executable, str(ROOT / "scripts" / "inject_poison.py"),
              str(demo.mnt / "original"), "--offset", "8192", "--length", "4096"])
    demo.sh("dd if=clone of=/dev/null bs=4096 skip=2 count=1 status=none; "
            "echo \"reading the bad block of the clone: exit status $?\"", check=False)
    demo.sh("dd if=clone of=/dev/null bs=4096 count=2 status=none && "
            "echo 'the other blocks read fine'")
    demo.daxfs("poison", "list", str(demo.mnt))
    section("the device map (like xfs_io -c fsmap), and a picture of it")
    demo.run(f"{sys.executable} -m daxfs.cli map --no-free {demo.mnt} "
             f"--png {demo.dir / 'map.png'} | tail -12", shell=True)
    section("the owner overwrites the whole bad block: it gets a healthy block")
    demo.sh("head -c 4096 /dev/zero | dd of=original bs=4096 seek=2 conv=notrunc status=none "
            "&& sync && rm clone && sync")
    demo.daxfs("poison", "list", str(demo.mnt))


# Later features append their sections here.
SECTIONS = [basics, reflink_and_dedupe, poison]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run the daxfs demo.")
    p.add_argument("--keep", metavar="DIR",
                   help="work in DIR and keep the image (default: a temporary dir)")
    args = p.parse_args(argv)
    workdir = Path(args.keep or tempfile.mkdtemp(prefix="daxfs-demo-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    demo = Demo(workdir)
    demo.mnt.mkdir(exist_ok=True)
    ok = False
    try:
        section("make a 256 MiB image")
        demo.daxfs("mkfs", demo.image, "--size", "256M", "--force")
        section("mount it")
        demo.daxfs("mount", demo.image, demo.mnt, "--log", demo.log)
        demo.run(["grep", "fuse.daxfs", "/proc/mounts"])
        for fn in SECTIONS:
            fn(demo)
        section("unmount (waits until the daemon has flushed and unlocked the image)")
        demo.daxfs("umount", demo.mnt)
        section("check the image")
        demo.daxfs("check", demo.image)
        section("mount again: everything is still there")
        demo.daxfs("mount", demo.image, demo.mnt, "--log", demo.log)
        demo.sh("cat docs/hello.txt && getfattr -n user.colour docs/hello.txt && "
                "sha256sum -c ../random.sha256 && stat -c '%n: %h links' hard-link")
        demo.daxfs("umount", demo.mnt)
        demo.daxfs("check", demo.image)
        ok = True
    finally:
        host.force_unmount(demo.mnt)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print("\ndemo finished: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
