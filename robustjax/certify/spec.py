"""What the verifier is asked: its settings, the checked inputs and box, and the margin
specification ``z_y - z_j`` whose lower bounds certify an example (Gowal et al. 2018,
Eq. 4; Zhang et al. 2020, Section 3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["METHODS", "NORMS", "canonical_method", "check_settings", "check_box",
           "check_inputs", "margin_spec", "margin_rows", "scatter_margins"]

METHODS = ("ibp", "crown_ibp", "crown", "alpha_crown")
NORMS = ("linf", "l2", "l1")


def canonical_method(method):
    """``"crown-ibp"`` and ``"crown_ibp"`` name the same method."""
    return method.replace("-", "_") if isinstance(method, str) else method


def check_settings(eps, norm, method) -> None:
    """Raises ValueError naming a bad eps (negative, not finite), norm or method."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    if canonical_method(method) not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    e = np.asarray(eps, dtype=np.float64)
    if not np.all(np.isfinite(e)) or np.any(e < 0):
        raise ValueError(f"eps must be finite and >= 0, got {eps!r}")


def check_box(bounds) -> tuple:
    """``(low, high)``, or ValueError unless ``bounds`` is a finite pair with low < high."""
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (low, high) of numbers, got {bounds!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"bounds must be finite with low < high, got {bounds!r}")
    return lo, hi


def check_inputs(x, bounds=(0.0, 1.0)) -> np.ndarray:
    """``x`` as float32, or ValueError naming the first example outside ``bounds`` or not finite.

    The verified set is the ball intersected with the box ``bounds``; an input
    outside the box (beyond float rounding: 1e-6 relative) would be moved into
    it, and its bounds would not contain the model's real output there.
    """
    lo, hi = check_box(bounds)
    x = np.asarray(x, np.float32)
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"x must be a non-empty batch of inputs with rank >= 2 (batch first), "
                         f"got shape {x.shape}")
    flat = x.reshape(x.shape[0], -1)
    bad = ~np.all(np.isfinite(flat), axis=1)
    if bad.any():
        raise ValueError(f"x[{int(np.argmax(bad))}] holds NaN or infinite values "
                         f"({int(bad.sum())} such example(s))")
    tol = 1e-6 * max(1.0, abs(lo), abs(hi))
    mins, maxs = flat.min(axis=1), flat.max(axis=1)
    bad = (mins < lo - tol) | (maxs > hi + tol)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"x[{i}] lies outside bounds [{lo:g}, {hi:g}]: its values range over "
            f"[{mins[i]:g}, {maxs[i]:g}] ({int(bad.sum())} such example(s)); pass bounds= "
            f"the box the inputs live in (normalised inputs need their own box, or the "
            f"normalisation inside logits_fn)")
    return x


def margin_spec(y, num_classes: int):
    """Rows e_y - e_j (j = 0..K-1; row y is zero): the margins z_y - z_j. Shape [B, K, K]."""
    onehot = jax.nn.one_hot(y, num_classes, dtype=jnp.float32)
    return onehot[:, None, :] - jnp.eye(num_classes, dtype=jnp.float32)[None]


def other_classes(y, num_classes: int):
    """[B, K-1]: the classes j != y of each example, in the order y+1, y+2, ... (mod K)."""
    return (y[:, None] + 1 + jnp.arange(num_classes - 1)[None]) % num_classes


def margin_rows(y, num_classes: int):
    """Rows e_y - e_j for j != y only, [B, K-1, K] (a bound pass costs one pass per row)."""
    xp = np if isinstance(y, np.ndarray) else jnp
    others = xp.asarray(other_classes(y, num_classes))
    eye = xp.eye(num_classes, dtype=xp.float32)
    return eye[y][:, None, :] - eye[others]


def scatter_margins(rows, y, num_classes: int, own):
    """[B, K] from per-row bounds [B, K-1] of :func:`margin_rows`, ``own`` at j = y."""
    xp = np if isinstance(rows, np.ndarray) else jnp
    others = xp.asarray(other_classes(y, num_classes))
    full = xp.full(rows.shape[:1] + (num_classes,), own, rows.dtype)
    if xp is np:
        np.put_along_axis(full, others, rows, axis=1)
        return full
    return full.at[jnp.arange(rows.shape[0])[:, None], others].set(rows)
