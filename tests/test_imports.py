"""The package's floors: every import inside `rnnode/` points down.

Read with `ast` (nothing is imported or compiled). The rules:

- no module inside the package imports the door `rnnode` (`import rnnode`,
  `from rnnode import …`, or a relative `from .. import X` where `X` is not a
  module): the door imports everything, so importing it back hides the order of
  the floors;
- no absolute `rnnode.…` imports inside the package (relative ones say where the
  module sits);
- a private module of a subpackage (`train/_run.py`) is imported only from inside
  that subpackage; others use its door (`rnnode.train`) or a public module
  (`rnnode.train.config`). The top-level private modules (`rnnode/_model.py`, …)
  are the shared floor every subpackage builds on;
- no private name (`_x`) is imported from another package's module;
- every module has at most 600 lines.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "rnnode"
MAX_LINES = 600
# Modules allowed over MAX_LINES for now, each with the issue that splits it.
TOO_LONG_FOR_NOW: dict[str, str] = {}


def _modules():
    return sorted(p for p in ROOT.rglob("*.py") if "__pycache__" not in p.parts)


def _name(path: Path) -> str:
    """`rnnode.train._run` for `rnnode/train/_run.py` (`rnnode.train` for its
    `__init__.py`)."""
    parts = ("rnnode",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(path: Path) -> str:
    """The package a module lives in (the package itself for an `__init__.py`)."""
    name = _name(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _is_module(dotted: str) -> bool:
    rel = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    return (ROOT / rel).with_suffix(".py").is_file() or (
        ROOT / rel / "__init__.py"
    ).is_file()


def _owner(dotted: str) -> str | None:
    """The subpackage whose private module `dotted` is (`rnnode.train` for
    `rnnode.train._run`, `rnnode.train.config` for `rnnode.train.config._load`),
    or `None` for a public module or one of the top-level floor's."""
    parts = dotted.split(".")
    for i in range(2, len(parts)):
        if parts[i].startswith("_"):
            return ".".join(parts[:i])
    return None


def _inside(package: str, owner: str) -> bool:
    return package == owner or package.startswith(owner + ".")


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    here = _package(path)
    rel = path.relative_to(ROOT.parent)
    out = []

    def check_module(target: str, line: int) -> None:
        owner = _owner(target)
        if owner is not None and not _inside(here, owner):
            out.append(
                f"{rel}:{line}: imports {target}, a private module of {owner} "
                f"(import from the door {owner} or a public module)"
            )

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "rnnode" or alias.name.startswith("rnnode."):
                    out.append(
                        f"{rel}:{node.lineno}: `import {alias.name}` inside the "
                        "package (use a relative import of the module you need)"
                    )
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module == "rnnode" or (node.module or "").startswith("rnnode."):
                    out.append(
                        f"{rel}:{node.lineno}: `from {node.module} import …` inside "
                        "the package (use a relative import of the module you need)"
                    )
                continue
            base = here.split(".")
            if node.level > 1:
                base = base[: len(base) - (node.level - 1)]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if _is_module(sub):
                    check_module(sub, node.lineno)
                    continue
                if target == "rnnode":
                    out.append(
                        f"{rel}:{node.lineno}: `{alias.name}` from the door rnnode "
                        "(import it from the module that defines it)"
                    )
                    continue
                check_module(target, node.lineno)
                if alias.name.startswith("_") and here != _package_of(target):
                    out.append(
                        f"{rel}:{node.lineno}: imports the private name "
                        f"{alias.name} from {target}, another package's module"
                    )
    return out


def _package_of(dotted: str) -> str:
    """The package of a module name (itself for a package)."""
    rel = Path(*dotted.split(".")[1:]) if "." in dotted else Path()
    if (ROOT / rel / "__init__.py").is_file():
        return dotted
    return dotted.rpartition(".")[0]


def test_imports_point_down():
    problems = [p for path in _modules() for p in _problems(path)]
    assert not problems, "\n".join(problems)


def test_modules_are_small_rooms():
    long = {}
    for path in _modules():
        key = path.relative_to(ROOT).as_posix()
        n = len(path.read_text().splitlines())
        if n > MAX_LINES and key not in TOO_LONG_FOR_NOW:
            long[key] = n
    assert not long, f"modules over {MAX_LINES} lines (split them): {long}"


@pytest.mark.parametrize(
    "source, expected",
    [
        ("import rnnode\n", "`import rnnode` inside"),
        ("from rnnode import mse\n", "`from rnnode import"),
        ("from .. import Model\n", "from the door rnnode"),
        ("from ..train._run import train\n", "private module of rnnode.train"),
        ("from .._integrate import _check_integrator\n", "private name"),
    ],
)
def test_the_rules_catch_upward_imports(tmp_path, monkeypatch, source, expected):
    """Each rule fires on a module that breaks it (placed in `rnnode/analysis/`)."""
    fake = ROOT / "analysis" / "_imports_probe.py"
    monkeypatch.setattr(Path, "read_text", lambda self: source)
    assert any(expected in p for p in _problems(fake))


def test_the_rules_allow_downward_imports(monkeypatch):
    source = (
        "from .._model import Model\nfrom ..gradients import BPTT\n"
        "from ._common import to_json\nfrom ..train.config import ConfigError\n"
        "from .. import data\n"
    )
    fake = ROOT / "analysis" / "_imports_probe.py"
    monkeypatch.setattr(Path, "read_text", lambda self: source)
    assert _problems(fake) == []
