"""The package's layering, read from the sources: no module imports one above it.

Each module's docstring says what it must not depend on; these tests hold the code to it, so that
an upward import (the worker importing the Boss, a scheduler importing the boss loop) fails here
rather than as an import cycle or a fork that drags the caller's state into a worker.
"""

from __future__ import annotations

import ast
import importlib
import pathlib
from typing import Dict, Iterator, Set

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "taylor"

#: Layer of each module (or package, for every module under it), from the bottom.  A module may
#: import only modules of its own layer or below.  Modules named nowhere (the boss loop, ``engine``
#: and the parts it may be split into) count as the boss-loop layer: nothing below it may import them.
LAYERS = [
    # 0: foundations, shared by every process
    {"errors", "checks", "wire", "report", "poller", "output", "progress", "shared", "util", "interrupts",
     "schedulers", "bulk"},
    # 1: what a task is, before any process
    {"instructions", "worker", "journal", "gnu", "sources", "status", "calls"},
    # 2: starting processes
    {"forking", "spawner", "launcher", "local", "reuse", "command", "examples", "cluster"},
    # 3: the boss loop (engine and its parts: every module not named here)
    set(),
    # 4: the caller's side
    {"bossrecord", "bossprocess", "boss", "batch"},
    # 5: front ends
    {"cli", "__main__", "", "executor"},  # "" is the package itself (taylor/__init__.py)
]
BOSS_LOOP = 3

#: Finer rules inside a layer: module -> what it must never import.
FORBIDDEN = {
    "bossrecord": {"bossprocess", "boss", "batch", "engine"},  # a record of messages: no process, no channel
    "bossprocess": {"boss", "batch"},  # the Boss is built on it
    "batch": {"bossprocess", "bossrecord", "engine"},  # the public Boss API only, as a user's script
    "interrupts": {"boss", "cli"},  # shared by both
    "cli": {"bossprocess", "bossrecord", "engine"},  # runs through the public Boss API only
    "executor": {"bossprocess", "bossrecord", "engine"},  # the public Boss API only
}


def _name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> Dict[str, pathlib.Path]:
    return {_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, source: str, modules: Set[str], is_package: bool = False) -> Iterator[str]:
    """The modules of the package (dotted, without ``taylor.``; ``""`` for the package itself) that
    ``source``, the code of module ``name``, imports wherever it does (functions' lazy imports too)."""
    here = name.split(".") if name else []
    package = here if is_package else here[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names if alias.name.split(".")[0] == "taylor"]
            yield from (target.partition(".")[2] for target in targets)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                module = ".".join(package[:len(package) - (node.level - 1)] + ([node.module] if node.module else []))
            elif (node.module or "").split(".")[0] == "taylor":
                module = node.module.partition(".")[2]
            else:
                continue
            for alias in node.names:  # from P import x: the module P.x if there is one, else P
                submodule = f"{module}.{alias.name}" if module else alias.name
                yield submodule if submodule in modules else module


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for number, names in enumerate(LAYERS):
        if module in names or top in names:
            return number
    return BOSS_LOOP


def violations(name: str, source: str, modules: Set[str], is_package: bool = False) -> Set[str]:
    """What ``source`` (module ``name``) imports against the layering, as readable lines."""
    found = set()
    layer = _layer(name)
    for module in imports_of(name, source, modules, is_package):
        if module == name:
            continue
        if _layer(module) > layer:
            found.add(f"{name or 'taylor'} (layer {layer}) imports {module or 'taylor'} (layer {_layer(module)})")
        forbidden = FORBIDDEN.get(name, set())
        if module.split(".")[0] in forbidden:
            found.add(f"{name} imports {module}, which it must never import")
    return found


def test_no_module_imports_one_above_it():
    modules = _modules()
    found = set()
    for name, path in modules.items():
        found |= violations(name, path.read_text(), set(modules), path.name == "__init__.py")
    assert not found, "upward imports:\n" + "\n".join(sorted(found))


def test_schedulers_import_nothing_of_taylor_but_schedulers_and_errors():
    """Schedulers are pure decisions: no process, no boss, no worker, so they can be unit-tested alone."""
    modules = _modules()
    for name, path in modules.items():
        if name.split(".")[0] != "schedulers":
            continue
        for module in imports_of(name, path.read_text(), set(modules), path.name == "__init__.py"):
            assert module.split(".")[0] in ("schedulers", "errors"), f"{name} imports {module or 'taylor'}"


@pytest.mark.parametrize("name, source", [
    ("worker", "from .boss import Boss\n"),
    ("worker", "def late():\n    from . import engine\n"),
    ("schedulers.threads", "from ..engine import serve\n"),
    ("schedulers.threads", "import taylor.cli\n"),
    ("report", "from taylor.worker import Worker\n"),
    ("errors", "from .entries import whatever\n"),  # a module named nowhere is the boss loop's
    ("bossrecord", "from .bossprocess import BossProcess\n"),
    ("batch", "from .bossprocess import BossProcess\n"),
])
def test_an_upward_import_is_caught(name, source):
    modules = set(_modules()) | {"entries"}
    assert violations(name, source, modules), f"{name} importing that went unnoticed"


def test_the_reader_sees_every_kind_of_import():
    """Top-level, relative, absolute, lazy (inside a function) and ``from . import module``."""
    modules = _modules()
    seen = {name: set(imports_of(name, modules[name].read_text(), set(modules), name == ""))
            for name in ("", "boss", "cli", "schedulers.memory", "cluster.launcher")}
    assert {"batch", "boss", "errors", "worker"} <= seen[""]
    assert {"bossprocess", "engine", "wire", "schedulers"} <= seen["boss"]
    assert {"boss", "interrupts", "schedulers", ""} <= seen["cli"]  # lazy; from . import __version__
    assert {"errors", "schedulers.memory_limit"} <= seen["schedulers.memory"]
    assert {"wire", "errors"} <= seen["cluster.launcher"]


def test_every_module_says_its_role():
    missing = [name or "taylor" for name, path in _modules().items()
               if not ast.get_docstring(ast.parse(path.read_text()))]
    assert not missing, f"modules without a docstring: {missing}"


def test_old_import_paths_still_work():
    from taylor import Boss, batch_main, run_as_server
    from taylor.boss import Boss as boss_Boss
    from taylor.boss import batch_main as boss_batch_main
    from taylor.boss import format_report as boss_format_report
    from taylor.boss import run_as_server as boss_run_as_server
    from taylor.util import SharedNumpyArray

    batch = importlib.import_module("taylor.batch")
    shared = importlib.import_module("taylor.shared")
    assert boss_Boss is Boss
    assert boss_batch_main is batch_main is batch.batch_main
    assert boss_run_as_server is run_as_server is batch.run_as_server
    assert boss_format_report is batch.format_report
    assert SharedNumpyArray is shared.SharedNumpyArray
    with pytest.raises(AttributeError):
        importlib.import_module("taylor.boss").no_such_name  # noqa: B018
