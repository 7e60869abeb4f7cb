"""The module paths of robustjax 0.1 (one flat folder), kept importable with a warning.

``import robustjax.evaluate`` or ``from robustjax.suite import run_suite`` still work:
the old name is an alias of the module's new place (``robustjax.evaluation.accuracy``,
``robustjax.evaluation.suite``), and the first use of each old path warns once with a
``DeprecationWarning`` naming the new one. Nothing else of robustjax imports these paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

__all__ = ["MOVED", "install"]

# The new place of each old module robustjax.<old>: package -> ((old, new name), ...).
_PLACES = {
    "runtime": (("mesh", "mesh"), ("rowstore", "rowstore"), ("xla_defaults", "xla_defaults")),
    "data": (("augment", "augment"),),
    "models": (("layers", "layers"), ("fastpath", "fastpath")),
    "attacks": (("geometry", "geometry"), ("l1", "l1"), ("apgd", "apgd"),
                ("apgd_l1", "apgd_l1"), ("fab", "fab"), ("square", "square")),
    "certify": (("bound_graph", "graph"), ("interval", "interval"), ("crown", "crown"),
                ("bound_memory", "memory")),
    "evaluation": (("evaluate", "accuracy"), ("autoattack", "autoattack"), ("suite", "suite"),
                   ("sweeps", "sweeps"), ("landscape", "landscape"), ("bracket", "bracket")),
    "training": (("config", "config"), ("state", "state"), ("step", "step"),
                 ("trades", "trades"), ("loop", "loop"), ("validation", "validation"),
                 ("workdir", "workdir")),
}
MOVED = {old: f"robustjax.{package}.{new}" for package, pairs in _PLACES.items()
         for old, new in pairs}
"""Old module (robustjax.<old>) -> its new place."""
MOVED["train"] = "robustjax.training"   # its names are the training package's
_warned: set = set()


def _warn(old: str) -> None:
    if old not in _warned:
        _warned.add(old)
        warnings.warn(f"robustjax.{old} moved to {MOVED[old]}; the old path will be removed",
                      DeprecationWarning, stacklevel=3)


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``robustjax.<old>`` and hands back the module at its new place."""

    def __init__(self):
        self._specs = {}

    def find_spec(self, fullname, path=None, target=None):
        package, _, old = fullname.partition(".")
        if package != "robustjax" or old not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        old = spec.name.partition(".")[2]
        _warn(old)
        module = importlib.import_module(MOVED[old])
        self._specs[spec.name] = module.__spec__
        return module

    def exec_module(self, module):
        # The import system stamps the alias's spec on the module: give it its own back.
        module.__spec__ = self._specs.pop(module.__spec__.name, module.__spec__)


class _Package(types.ModuleType):
    """The top package: an old module name reached as an attribute warns, and importing an
    old path never replaces a top-level function of the same name (``robustjax.apgd``)."""

    def __getattr__(self, name):
        if name in MOVED:
            _warn(name)
            return importlib.import_module(MOVED[name])
        raise AttributeError(f"module 'robustjax' has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in MOVED and isinstance(value, types.ModuleType) and name in self.__dict__:
            return
        super().__setattr__(name, value)


def install(package_name: str = "robustjax") -> None:
    """Makes the old paths of ``package_name`` importable (idempotent)."""
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())
    sys.modules[package_name].__class__ = _Package
