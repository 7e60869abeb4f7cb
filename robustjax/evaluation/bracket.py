"""The bracket on robust accuracy: certified (lower) and attacked (upper), per example, as
Gowal et al. (2018) and Zhang et al. (2020) report verified and PGD accuracy side by side.

A verifier (:mod:`robustjax.certify.verifier`) proves that an example's prediction
cannot change within the eps-ball; an attack (PGD, AutoAttack) finds points
where it does. The true robust accuracy lies between the certified accuracy
and the accuracy under the strongest attack, and for every single example the
two must agree: **an example that is certified and yet broken by an attack is a
bug** (in the verifier, the attack or the model's determinism).
:func:`bracket` computes both sides per example and raises
:class:`BracketError` naming the first such example.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np

from robustjax.attacks import first_order as attacks
from robustjax.evaluation import autoattack
from robustjax.certify import verifier as certify
from robustjax.evaluation import accuracy as evaluate

__all__ = ["BracketError", "bracket", "check_bracket", "ATTACK_ROWS"]

log = logging.getLogger("robustjax.evaluation.bracket")
ATTACK_ROWS = ("pgd", "autoattack")


class BracketError(RuntimeError):
    """An example is certified robust and yet an attack broke it."""


def check_bracket(certified: dict, robust: dict, *, eps: float, index=None) -> None:
    """Raises :class:`BracketError` if any certified example is not robust under an attack.

    ``certified`` / ``robust``: ``{method or attack: bool [N]}``. ``index``: the
    examples' indices in the dataset (for the message).
    """
    for method, cert in certified.items():
        for attack, rob in robust.items():
            bad = np.flatnonzero(np.asarray(cert) & ~np.asarray(rob))
            if bad.size:
                i = int(bad[0]) if index is None else int(np.asarray(index)[bad[0]])
                raise BracketError(
                    f"example {i} is certified by {method} at eps {eps:g} and yet broken by "
                    f"{attack} ({bad.size} such example(s)): a bug in the bounds, the attack or "
                    f"the model's determinism")


def bracket(logits_fn: Callable, x, y, *, eps: float, norm: str = "linf",
            methods: Sequence[str] = ("ibp", "crown_ibp", "crown"),
            attack_rows: Sequence[str] = ATTACK_ROWS, key: Optional[jax.Array] = None,
            pgd_steps: int = 40, pgd_restarts: int = 1, autoattack_version: str = "standard",
            autoattack_steps: int = 100, autoattack_queries: int = 5000,
            batch_size: int = 500, bound_batch_size: int = 256, crown_batch_size: int = 256,
            bounds=(0.0, 1.0), resume_dir: Optional[str] = None, check: bool = True,
            memory_budget: Optional[float] = None) -> dict:
    """Clean, attacked and certified correctness of every example at one eps.

    PGD-k uses step 2.5 eps / k with a random start (Madry et al.'s rule;
    ``pgd_restarts`` restarts). AutoAttack is the ensemble of
    :func:`robustjax.evaluation.autoattack.autoattack` (``resume_dir`` makes it resumable).
    Returns ``{"clean": bool[N], "attacks": {row: bool[N]}, "certified":
    {method: bool[N]}, "seconds": {...}}``; with ``check``, raises
    :class:`BracketError` when a certified example is broken. ``x`` must lie in
    ``bounds`` (:func:`robustjax.certify.verifier.check_inputs`); the verifiers run in
    chunks of at most ``bound_batch_size`` / ``crown_batch_size`` examples that
    fit ``memory_budget`` bytes (default: half the free memory).
    """
    key = jax.random.PRNGKey(0) if key is None else key
    x = certify.check_inputs(x, bounds)
    y = np.asarray(y)
    for m in methods:
        if m not in certify.METHODS:
            raise ValueError(f"methods must be from {certify.METHODS}, got {m!r}")
    for a in attack_rows:
        if a not in ATTACK_ROWS:
            raise ValueError(f"attack_rows must be from {ATTACK_ROWS}, got {a!r}")
    seconds, robust, cert = {}, {}, {}
    clean = evaluate.robust_accuracy(logits_fn, x, y, None, eps=eps, norm=norm,
                                     batch_size=batch_size, bounds=bounds).correct
    for row in attack_rows:
        t0 = time.time()
        if row == "pgd":
            step = 2.5 * eps / pgd_steps if eps > 0 else 0.01
            atk = functools.partial(attacks.pgd, logits_fn, eps=eps, step_size=step,
                                    num_steps=pgd_steps, restarts=pgd_restarts, norm=norm,
                                    bounds=bounds)
            robust[row] = evaluate.robust_accuracy(logits_fn, x, y, atk, eps=eps, norm=norm,
                                                   batch_size=batch_size, key=key,
                                                   bounds=bounds).correct
        else:
            res = autoattack.autoattack(logits_fn, x, y, jax.random.fold_in(key, 1), eps=eps,
                                        norm=norm, version=autoattack_version,
                                        batch_size=batch_size, num_steps=autoattack_steps,
                                        num_queries=autoattack_queries, bounds=bounds,
                                        resume_dir=resume_dir)
            robust[row] = np.asarray(res.correct)
        seconds[row] = time.time() - t0
        log.info("eps %g: %s robust accuracy %.2f%% (%.0f s)", eps, row,
                 100 * robust[row].mean(), seconds[row])
    for m in methods:
        t0 = time.time()
        bs = crown_batch_size if m in ("crown", "alpha_crown") else bound_batch_size
        cert[m] = np.asarray(certify.certified(logits_fn, x, y, eps=eps, method=m, norm=norm,
                                               bounds=bounds, batch_size=bs,
                                               memory_budget=memory_budget))
        seconds[m] = time.time() - t0
        log.info("eps %g: %s certified accuracy %.2f%% (%.0f s)", eps, m, 100 * cert[m].mean(),
                 seconds[m])
    if check:
        check_bracket(cert, robust, eps=eps)
    return dict(clean=np.asarray(clean), attacks=robust, certified=cert, seconds=seconds)
