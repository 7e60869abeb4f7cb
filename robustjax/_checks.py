"""Argument checks shared by every attack and evaluation (private to robustjax).

Each check raises ``ValueError`` naming the argument and what was expected. They run at
call or trace time on static values; a traced number is not inspected (it cannot be
without a host round trip), so checks never break ``jax.jit`` or ``jax.vmap``.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_choice", "is_concrete", "check_scalar", "check_int", "check_bounds",
           "check_xy", "checked_logits"]


def check_choice(name, value, choices):
    """Raises ValueError unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def is_concrete(v) -> bool:
    """True for a value known at trace time (not a tracer)."""
    return not isinstance(v, jax.core.Tracer)


def check_scalar(name, value, *, positive=False):
    """Checks a number that may be traced: only concrete values are inspected."""
    if callable(value):
        return
    if not is_concrete(value):
        return
    arr = np.asarray(value)
    if arr.ndim != 0 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be a real scalar, got {value!r}")
    v = float(arr)
    if np.isnan(v):
        raise ValueError(f"{name} must not be NaN")
    if positive and not v > 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    if not positive and v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")


def check_int(name, value, minimum):
    """Raises ValueError unless ``value`` is an integer (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_bounds(bounds):
    """``(low, high)`` as floats, or ValueError unless ``bounds`` is a pair with low < high."""
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (low, high) of numbers, got {bounds!r}") from None
    if not lo < hi:
        raise ValueError(f"bounds must satisfy low < high, got {bounds!r}")
    return lo, hi


def check_xy(x, y, *, targeted):
    """Raises ValueError unless ``x`` is a float batch (rank >= 2) and ``y`` its int labels."""
    name = "y (target labels)" if targeted else "y"
    if not hasattr(x, "shape") or x.ndim < 2:
        raise ValueError(f"x must be a batch of inputs with rank >= 2 (batch first), "
                         f"got shape {getattr(x, 'shape', None)}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"x must be a floating-point array, got dtype {x.dtype}")
    if not hasattr(y, "shape") or y.ndim != 1:
        raise ValueError(f"{name} must be a rank-1 array of integer labels, "
                         f"got shape {getattr(y, 'shape', None)}")
    if not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {y.dtype}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"x and {name} must have the same batch size, "
                         f"got {x.shape[0]} and {y.shape[0]}")


def checked_logits(logits_fn, x):
    """``logits_fn(x)``, or ValueError unless it is ``[batch, num_classes]``."""
    logits = logits_fn(x)
    if logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(f"logits_fn must map a batch of {x.shape[0]} inputs to logits of "
                         f"shape [{x.shape[0]}, num_classes], got {logits.shape}")
    return logits
