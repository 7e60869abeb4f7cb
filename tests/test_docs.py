"""The API site and the docstrings it is built from (issue 32).

The site (mkdocs + mkdocstrings, ``mkdocs.yml``) builds in strict mode: a broken link,
a missing page or a docstring mkdocstrings cannot read fails it. Every public name has
a docstring; every module of an algorithm, and every name of the top package, says which
paper, equation, section or algorithm it implements.
"""

import importlib
import inspect
import pathlib
import pkgutil
import re
import subprocess
import sys

import pytest

import robustjax

REPO = pathlib.Path(__file__).resolve().parents[1]
CITATION = re.compile(r"\b(19|20)\d\d\b|Eq\.|Equation|Section|Algorithm|et al\.|Table|Figure")
# Modules of plumbing, not of an algorithm: no paper to name.
INFRASTRUCTURE = {
    "robustjax._checks": "argument checks",
    "robustjax._compat": "old import paths",
    "robustjax.runtime": "devices, XLA flags, files",
    "robustjax.runtime.jaxprs": "which jaxpr primitives are calls",
    "robustjax.runtime.mesh": "devices and processes",
    "robustjax.runtime.rowstore": "files of finished rows",
    "robustjax.runtime.xla_defaults": "XLA flags",
    "robustjax.training.workdir": "the run directory's files",
    "robustjax.zoo": "published checkpoints",
    "robustjax.zoo.convert": "checkpoint formats",
    "robustjax.zoo.registry": "the model registry",
}
MODULES = ["robustjax"] + [m.name for m in pkgutil.walk_packages(robustjax.__path__,
                                                                 "robustjax.")]


def _public(module):
    for name in getattr(module, "__all__", []):
        obj = getattr(module, name)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and (
                getattr(obj, "__module__", "") or "").startswith("robustjax"):
            yield name, obj


@pytest.mark.parametrize("name", MODULES)
def test_every_public_name_has_a_docstring(name):
    module = importlib.import_module(name)
    assert (module.__doc__ or "").strip(), f"{name} has no module docstring"
    missing = [n for n, obj in _public(module) if not (inspect.getdoc(obj) or "").strip()]
    assert not missing, f"{name}: no docstring for {missing}"
    if name not in INFRASTRUCTURE:
        assert CITATION.search(module.__doc__), f"{name}: name the paper, section or equation"


def test_the_top_level_names_cite_their_paper():
    uncited = [n for n, obj in _public(robustjax) if not CITATION.search(inspect.getdoc(obj))]
    assert not uncited, f"robustjax.{uncited}: the docstring names no paper or equation"


def test_every_subpackage_has_an_api_page():
    pages = {p.stem for p in (REPO / "docs" / "api").glob("*.md")}
    subpackages = {m.name for m in pkgutil.iter_modules(robustjax.__path__)
                   if m.ispkg}
    assert subpackages <= pages, subpackages - pages
    for page in pages - {"index"}:
        text = (REPO / "docs" / "api" / f"{page}.md").read_text()
        package = importlib.import_module(f"robustjax.{page}")
        modules = {m.name for m in pkgutil.iter_modules(package.__path__)
                   if not m.name.startswith("_")}
        listed = set(re.findall(rf"::: robustjax\.{page}\.(\w+)", text))
        assert modules <= listed, f"docs/api/{page}.md misses {modules - listed}"


def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocstrings", reason="the docs extra: pip install -e '.[docs]'")
    p = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict",
                        "--site-dir", str(tmp_path / "site")], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "site" / "api" / "attacks" / "index.html").exists()
