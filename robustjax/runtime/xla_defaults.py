"""The XLA settings robustjax chooses by default, where they are measured to help.

XLA reads ``XLA_FLAGS`` once, when JAX starts its first backend. Importing
:mod:`robustjax` before that (importing ``jax`` alone does not start one)
adds the flags of :data:`DEFAULT_FLAGS` to ``XLA_FLAGS``:

* ``--xla_cpu_experimental_ynn_fusion_type=dot``: YNNPACK keeps the matrix
  products, and convolutions go to XLA's multi-threaded Eigen kernels. With
  JAX's default fusion types YNNPACK runs each convolution on one thread. On
  the 2-core CPU box (Zen 3) this makes a PGD-40 on a stock-layer CNN (with
  the rewrite of robustjax.models.fastpath) 2.6x faster, and on Madry's MNIST network
  1.5x faster (benchmarks/RESULTS.md, "Any model, no flags"). It only concerns the CPU backend.

Rules:

* a flag the user already set in ``XLA_FLAGS`` (with any value) is never
  changed, and nothing is removed;
* ``ROBUSTJAX_XLA_DEFAULTS=0`` turns the defaults off;
* nothing is added when a JAX backend has already started (the flags would
  have no effect) or when the installed jaxlib is older than the first one
  measured with these flags (XLA stops at an unknown flag).

:func:`status` says what was added and why not, if nothing was.
"""

from __future__ import annotations

import os
import re

__all__ = ["DEFAULT_FLAGS", "ENV_VAR", "apply", "flags_to_add", "status"]

DEFAULT_FLAGS = {"xla_cpu_experimental_ynn_fusion_type": "dot"}
"""Flag name -> value added to ``XLA_FLAGS`` unless the user set that flag."""

ENV_VAR = "ROBUSTJAX_XLA_DEFAULTS"
"""``0`` / ``false`` / ``off`` / ``no``: add no XLA flags."""

_MIN_JAXLIB = (0, 10)  # the first jaxlib these flags were measured with (0.10.2)

_status = {"added": (), "reason": "not applied yet"}


def _jaxlib_version() -> tuple:
    try:
        from importlib.metadata import version
        return tuple(int(p) for p in re.findall(r"\d+", version("jaxlib"))[:3])
    except Exception:  # noqa: BLE001 -- unknown: treat as too old
        return ()


def _backend_started() -> bool:
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # noqa: BLE001 -- private API moved: assume not started
        return False


def flags_to_add(xla_flags: str, *, environ=None, jaxlib_version=None,
                 backend_started=None) -> tuple:
    """``(flags to add, reason)`` for a given ``XLA_FLAGS`` string; changes nothing."""
    env = os.environ if environ is None else environ
    if env.get(ENV_VAR, "1").strip().lower() in ("0", "false", "off", "no"):
        return (), f"{ENV_VAR}={env.get(ENV_VAR)}"
    version = _jaxlib_version() if jaxlib_version is None else jaxlib_version
    if version < _MIN_JAXLIB:
        return (), f"jaxlib older than {'.'.join(map(str, _MIN_JAXLIB))}"
    if _backend_started() if backend_started is None else backend_started:
        return (), "a JAX backend had already started when robustjax was imported"
    added = tuple(f"--{name}={value}" for name, value in DEFAULT_FLAGS.items()
                  if not re.search(rf"--{name}(=|\s|$)", xla_flags))
    return added, ("added" if added else "XLA_FLAGS already sets them")


def apply() -> tuple:
    """Adds the default flags to ``os.environ["XLA_FLAGS"]``; returns those added.

    Called when :mod:`robustjax` is imported; a second call adds nothing.
    """
    if _status["added"]:
        return ()
    current = os.environ.get("XLA_FLAGS", "")
    added, reason = flags_to_add(current)
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current.strip(), *added]).strip()
    _status.update(added=added, reason=reason)
    return added


def status() -> dict:
    """``{"added": flags robustjax added, "reason": why (or why not), "xla_flags": now}``."""
    return dict(_status, xla_flags=os.environ.get("XLA_FLAGS", ""))
