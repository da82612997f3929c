"""The house rules of the code layout, checked on the source: rooms import only rooms below them."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Rooms of layerswarm.bridge from the bottom up; a module may import its own room or lower ones.
ROOMS = ["format", "config", "node", "sources", "authz", "http", "devstack", "cli"]


def _modules(package_dir: str, namespace: str):
    for path in sorted((ROOT / package_dir).rglob("*.py")):
        rel = path.relative_to(ROOT / package_dir).with_suffix("")
        parts = [p for p in rel.parts if p != "__init__"]
        yield ".".join([namespace, *parts]), path


def _imports(path: Path) -> set:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _room(module: str) -> str | None:
    parts = module.split(".")
    if parts[:2] != ["layerswarm", "bridge"] or len(parts) < 3:
        return None
    return parts[2]


def test_bridge_rooms_import_only_rooms_below():
    wrong = []
    for mod, path in _modules("bridge", "layerswarm.bridge"):
        here = _room(mod)
        if here is None:
            continue
        for imp in _imports(path):
            there = _room(imp)
            if there in ROOMS and ROOMS.index(there) > ROOMS.index(here):
                wrong.append(f"{mod} ({here}) imports {imp} ({there})")
            if imp.startswith("layerswarm.tracker") and here != "cli":
                wrong.append(f"{mod} imports the tracker package")
    assert not wrong, "\n".join(wrong)


def test_format_is_a_leaf_and_the_tracker_uses_only_it():
    wrong = []
    for mod, path in _modules("bridge/format", "layerswarm.bridge.format"):
        wrong += [f"{mod} imports {i}" for i in _imports(path)
                  if i.startswith("layerswarm.") and not i.startswith("layerswarm.bridge.format")]
    for mod, path in _modules("tracker", "layerswarm.tracker"):
        wrong += [f"{mod} imports {i}" for i in _imports(path)
                  if i.startswith("layerswarm.bridge") and not i.startswith("layerswarm.bridge.format")]
    assert not wrong, "\n".join(wrong)


def test_one_namespace_and_one_libtorrent_import():
    wrong = []
    for pkg in ("bridge", "tracker", "tests", "scripts"):
        for path in (ROOT / pkg).rglob("*.py"):
            for imp in _imports(path):
                top = imp.split(".")[0]
                if top in ("bridge", "tracker"):
                    wrong.append(f"{path.relative_to(ROOT)} imports top-level {imp}")
                if pkg == "scripts" and top == "tests":
                    wrong.append(f"{path.relative_to(ROOT)} imports from tests/")
                if top == "libtorrent" and pkg == "bridge" and "node/torrent" not in path.as_posix():
                    wrong.append(f"{path.relative_to(ROOT)} imports libtorrent outside node/torrent/")
    assert not wrong, "\n".join(wrong)


def test_every_module_says_what_it_is_for():
    missing = []
    for pkg in ("bridge", "tracker"):
        for path in (ROOT / pkg).rglob("*.py"):
            doc = ast.get_docstring(ast.parse(path.read_text()))
            if not doc or not doc.strip():
                missing.append(str(path.relative_to(ROOT)))
    assert not missing, missing
