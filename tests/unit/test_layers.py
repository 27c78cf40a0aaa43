"""The relay's floors (docs/design.md, "The map"): an import never runs back up a floor.

Each module of relay/ belongs to one floor; a module may import its own floor and the floors
below it, never one above. A move that breaks this puts a module in the wrong room, which is
what the map exists to prevent. Lazy imports inside functions count too.
"""

import ast
from pathlib import Path

import relay

RELAY = Path(relay.__file__).parent

FLOORS: list[tuple[str, int]] = [  # module prefix -> floor, most specific first
    ("relay.entry", 6),
    ("relay.migrate", 6),  # old path kept for one release, imports its new home
    ("relay.sqlmigration", 6),  # likewise
    ("relay.cli", 5),
    ("relay.daemon", 4),
    ("relay.pipeline", 3),
    ("relay.server", 3),
    ("relay.stripe", 2),
    ("relay.db", 1),
    ("relay.emulator", 1),
    ("relay.core", 0),
    ("relay", 0),  # the package itself: its version
]


def floor(module: str) -> int:
    for prefix, level in FLOORS:
        if module == prefix or module.startswith(prefix + "."):
            return level
    raise AssertionError(f"{module} is on no floor: add it to FLOORS and to docs/design.md")


def module_name(path: Path) -> str:
    parts = path.relative_to(RELAY.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, module: str) -> set[str]:
    """Every relay module `path` imports, at the top or inside a function."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name == "relay" or name.startswith("relay.")}


def known_module(name: str) -> str | None:
    """The module `name` denotes (a package, a module or a name inside one), if relay has it."""
    while name:
        as_path = RELAY.parent / name.replace(".", "/")
        if as_path.with_suffix(".py").is_file() or (as_path / "__init__.py").is_file():
            return name
        name = name.rpartition(".")[0]
    return None


def test_no_import_runs_back_up_a_floor() -> None:
    upward = []
    for path in sorted(RELAY.rglob("*.py")):
        if "migrations" in path.relative_to(RELAY).parts:
            continue  # alembic's scripts, run by alembic, not imported by the relay
        here = module_name(path)
        for name in imports(path, here):
            target = known_module(name)
            if target is not None and floor(target) > floor(here):
                upward.append(f"{here} (floor {floor(here)}) -> {target} (floor {floor(target)})")
    assert upward == [], "\n".join(sorted(set(upward)))


def test_every_module_is_on_a_floor() -> None:
    for path in RELAY.rglob("*.py"):
        if "migrations" not in path.relative_to(RELAY).parts:
            floor(module_name(path))
