"""The documentation runs as written.

- The ```python blocks of README.md and of every page under docs/ execute: the
  blocks of one page in order, in one namespace, in a temporary directory, with
  JAX's standard dtype promotion (what a reader has; float64 stays on, from
  conftest). A block preceded by the line `<!-- no-run -->` is shown but not run
  (see docs/contributing.md).
- `mkdocs build --strict` builds the site (skipped if MkDocs is not installed).
- Every public name of `rnnode` and of its subpackages appears in the API
  reference (a `::: rnnode.NAME` line in docs/api/).
"""

import importlib
import os
import pathlib
import re
import subprocess
import sys
import textwrap
import types

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```python[^\n]*\n(?P<code>.*?)^(?P=indent)```", re.S | re.M
)
NO_RUN = "<!-- no-run -->"
SUBPACKAGES = ("analysis", "data", "sweep", "train")


def python_blocks(text):
    """The runnable ```python blocks of a Markdown text, dedented, in order."""
    blocks = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().rsplit("\n", 1)[-1].strip()
        if before != NO_RUN:
            blocks.append(textwrap.dedent(match.group("code")))
    return blocks


def _name(page):
    return str(page.relative_to(ROOT))


RUNNABLE = [page for page in PAGES if python_blocks(page.read_text())]


def test_readme_has_examples():
    assert len(python_blocks(README.read_text())) >= 1


def test_fence_convention():
    text = "a\n\n<!-- no-run -->\n```python\nskipped()\n```\n\n  ```python\n  x = 1\n  ```\n"
    assert python_blocks(text) == ["x = 1\n"]


@pytest.mark.parametrize("page", RUNNABLE, ids=_name)
def test_page_examples_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__docs__"}
    with jax.numpy_dtype_promotion("standard"):
        for index, code in enumerate(python_blocks(page.read_text())):
            code = compile(code, f"{_name(page)}[python block {index}]", "exec")
            exec(code, namespace)


def test_mkdocs_build_strict(tmp_path):
    for module in (
        "mkdocs",
        "material",
        "mkdocstrings",
        "mkdocstrings_handlers.python",
    ):
        pytest.importorskip(
            module, reason=f"`{module}` not installed: pip install -e '.[docs]'"
        )
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet"]
        + ["-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "dynamics" / "index.html").exists()


def _resolve(path):
    module_name, _, attr = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError):
        return importlib.import_module(path)


def test_api_reference_covers_public_names():
    documented = set()
    for page in sorted((DOCS / "api").glob("*.md")):
        for path in re.findall(r"^:::\s*(\S+)", page.read_text(), flags=re.M):
            documented.add(id(_resolve(path)))
    missing = []
    for namespace in ("rnnode", *(f"rnnode.{sub}" for sub in SUBPACKAGES)):
        module = importlib.import_module(namespace)
        for name in dir(module):
            obj = getattr(module, name)
            if name.startswith("_") or isinstance(obj, types.ModuleType):
                continue
            if id(obj) not in documented:
                missing.append(f"{namespace}.{name}")
    assert not missing, (
        "public names missing from the API reference; add a `::: NAME` line to the "
        f"right page of docs/api/: {missing}"
    )
