"""The layers of daxfs import only downwards (../shared/DESIGN.md):

* the engine (daxfs/engine) never imports the FUSE layer, the control
  protocol, the commands, pyfuse3 or trio: it runs without a mount;
* fsck (daxfs/fsck) works on an image, not a mount: no FUSE, no commands;
* the control protocol (daxfs/control) is spoken by clients: no FUSE layer,
  no commands;
* the FUSE layer never imports a command;
* no command imports another (shared helpers live in daxfs/cli/common.py;
  a command's own helper, such as map_picture.py, is not a command).

Every import statement is read from the source (also those inside
functions), so a lazy import cannot hide an upward one.
"""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "daxfs"

FORBIDDEN = {
    "engine": ("daxfs.fuse", "daxfs.control", "daxfs.cli", "daxfs.fsck", "pyfuse3", "trio"),
    "fsck": ("daxfs.fuse", "daxfs.control", "daxfs.cli", "pyfuse3", "trio"),
    "control": ("daxfs.fuse", "daxfs.cli", "pyfuse3", "trio"),
    "fuse": ("daxfs.cli",),
}


def _module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative
    imports resolved against the file's package."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            # `from daxfs import fuse` imports daxfs.fuse
            found += [(node.lineno, f"{mod}.{a.name}") for a in node.names]
            found.append((node.lineno, mod))
    return found


def _sources(layer: str) -> list[pathlib.Path]:
    return sorted((PKG / layer).rglob("*.py"))


def _hits(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layer_imports_only_downwards(layer):
    files = _sources(layer)
    assert files, f"no sources under daxfs/{layer}"
    bad = [f"{p.relative_to(PKG.parent)}:{line} imports {name}"
           for p in files for line, name in imports_of(p)
           if _hits(name, FORBIDDEN[layer])]
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_command_imports_another():
    from daxfs.cli import COMMANDS
    commands = {f"daxfs.cli.{name}" for name in COMMANDS}
    assert all((PKG / "cli" / f"{name}.py").exists() for name in COMMANDS)
    bad = []
    for p in _sources("cli"):
        me = _module_name(p)
        for line, name in imports_of(p):
            other = next((c for c in commands if _hits(name, (c,))), None)
            if other and other != me and me != "daxfs.cli.__main__":
                bad.append(f"{p.relative_to(PKG.parent)}:{line} imports {name}")
    assert not bad, "commands importing commands:\n" + "\n".join(bad)


def test_checker_sees_upward_imports(tmp_path):
    """The check itself can fail: an engine module importing the FUSE layer
    lazily, relatively, or by `from daxfs import fuse` is caught."""
    engine = tmp_path / "daxfs" / "engine"
    engine.mkdir(parents=True)
    bad = engine / "bad.py"
    bad.write_text("def f():\n    from ..fuse import operations\n"
                   "    from daxfs import cli\n    import trio\n")
    global PKG
    saved, PKG = PKG, tmp_path / "daxfs"
    try:
        names = [n for _, n in imports_of(bad)]
    finally:
        PKG = saved
    assert _hits("daxfs.fuse.operations", FORBIDDEN["engine"])
    assert any(_hits(n, FORBIDDEN["engine"]) for n in names if n.startswith("daxfs.fuse"))
    assert "daxfs.cli" in names and "trio" in names
