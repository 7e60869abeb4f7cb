"""Accuracy against eps, and the gradient-masking checks read from those curves.

Madry et al. plot accuracy against eps for L-inf and L2 adversaries (Section 5,
Figure 6 and the appendix on eps sweeps). On MNIST, the L-inf-trained model
looks robust to large L2 perturbations under PGD, while a gradient-free attack
breaks it at far smaller eps: PGD's gradients are masked there (the model
learns thresholding filters). :func:`accuracy_curve` computes one such curve
for one attack; ``eps`` is a traced argument of one jitted function, so a
sweep compiles once per attack, not once per eps.

:func:`masking_checks` runs the standard sanity checks on a set of curves
(Carlini et al. 2019, "On Evaluating Adversarial Robustness", Section 5;
Croce & Hein 2020): accuracy at eps 0 equals clean accuracy, accuracy does not
rise with eps (beyond sampling noise), it reaches (near) zero at large eps,
and a gradient-free attack is not much stronger than the gradient attacks at
the training eps. A failed check is reported, not raised.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Sequence

import jax
import numpy as np

from robustjax import _checks
from robustjax.attacks import apgd as _apgd
from robustjax.attacks import first_order as _a
from robustjax.certify import verifier as certify
from robustjax.evaluation import accuracy as evaluate
from robustjax.runtime import mesh as _mesh
from robustjax.attacks import square as _square

__all__ = ["SWEEP_ATTACKS", "GRADIENT_FREE", "sweep_attack", "EpsCurve", "accuracy_curve",
           "certified_curve", "masking_checks"]

SWEEP_ATTACKS = ("fgsm", "pgd", "apgd", "apgd_t", "square")
"""Attacks :func:`sweep_attack` builds; "square" is the gradient-free one."""
GRADIENT_FREE = ("square",)

EpsAttack = Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]


def sweep_attack(name: str, logits_fn: _a.LogitsFn, *, norm: str, num_steps: Optional[int] = None,
                 step_scale: float = 2.5, num_queries: int = 5000, restarts: int = 1,
                 bounds=(0.0, 1.0)) -> EpsAttack:
    """``attack(x, y, key, eps) -> x_adv`` for a sweep, with ``eps`` traced.

    * ``"fgsm"``: one signed step of size eps (L-inf), one normalised
      gradient step of size eps (L2), or one sparse step of L1 length eps (L1).
    * ``"pgd"``: PGD with a random start, ``num_steps`` (default 100) steps of
      ``step_scale * eps / num_steps`` (2.5 eps / k: a path 2.5 times the
      radius, the rule of Madry et al.'s released code), ``restarts`` starts.
    * ``"apgd"``: APGD with cross-entropy (AutoAttack's APGD-CE), ``num_steps``
      (default 100); ``"apgd_t"``: APGD-T with the targeted DLR loss, 9 targets.
      For L1, AutoAttack's L1 settings: ``use_largereps`` (without it l1-APGD is
      much weaker: on the CPU recipe's MNIST model at eps 10, 42.5% robust
      accuracy on 200 digits against 19.5% with it; the official code: 50.0% and
      22.0%) and 5 targets.
    * ``"square"``: Square, ``num_queries`` queries, no gradients.
    """
    _checks.check_choice("attack", name, SWEEP_ATTACKS)
    _checks.check_choice("norm", norm, tuple(_a.NORMS))
    steps = 100 if num_steps is None else num_steps
    if name == "fgsm":
        def run(x, y, key, eps):
            return _a.pgd(logits_fn, x, y, key, eps=eps, step_size=eps, num_steps=1, norm=norm,
                          random_start=False, bounds=bounds)
        return run
    if name == "pgd":
        def run(x, y, key, eps):
            return _a.pgd(logits_fn, x, y, key, eps=eps, step_size=step_scale * eps / steps,
                          num_steps=steps, norm=norm, restarts=restarts, bounds=bounds)
        return run
    if name in ("apgd", "apgd_t"):
        fn = _apgd.apgd if name == "apgd" else _apgd.apgd_t
        kw = dict(loss="ce") if name == "apgd" else {}
        if norm == "l1":  # AutoAttack's L1 settings: the large-eps start, 5 targets
            kw["use_largereps"] = True
            if name == "apgd_t":
                kw["num_targets"] = 5
        return lambda x, y, key, eps: fn(logits_fn, x, y, key, eps=eps, norm=norm,
                                         num_steps=steps, restarts=restarts, bounds=bounds,
                                         **kw)
    return lambda x, y, key, eps: _square.square(logits_fn, x, y, key, eps=eps, norm=norm,
                                                 num_queries=num_queries, bounds=bounds)


class EpsCurve(NamedTuple):
    """Accuracy of one model under one attack at each eps of a sweep."""

    eps: np.ndarray            # [E]
    accuracy: np.ndarray       # [E]
    correct: np.ndarray        # bool [E, N], per-example robust correctness
    clean_accuracy: float


def accuracy_curve(logits_fn: _a.LogitsFn, x, y, key: jax.Array, attack: EpsAttack,
                   eps_values: Sequence[float], *, norm: str, batch_size: int = 500,
                   bounds=(0.0, 1.0), atol: float = 1e-5, progress=None,
                   mesh=None) -> EpsCurve:
    """Robust accuracy at each eps, from validated adversarial examples (one compilation).

    ``attack(x, y, key, eps)`` is built by :func:`sweep_attack` (or any
    function of that shape). Example ``j`` is attacked alone with
    ``fold_in(key, j)`` at every eps, as in :func:`evaluate.robust_accuracy`,
    and every adversarial example passes :func:`evaluate.validate_checks` at
    its eps. Batches are split over ``mesh`` (default: every device of every
    process); neither the batch size nor the devices change a result.
    ``progress(eps, accuracy)`` is called on the host after each eps.
    """
    _checks.check_choice("norm", norm, tuple(_a.NORMS))
    _checks.check_int("batch_size", batch_size, 1)
    eps_values = [float(e) for e in eps_values]
    if not eps_values:
        raise ValueError("eps_values must hold at least one eps")
    for e in eps_values:
        _checks.check_scalar("eps_values", e)
    lo, hi = _checks.check_bounds(bounds)
    x, y = evaluate.check_dataset(x, y, num_classes=evaluate.num_classes(logits_fn, np.shape(x)[1:]),
                                  bounds=bounds)

    mesh = _mesh.make_mesh() if mesh is None else mesh

    def run_local(xb, yb, ib, key, eps):
        x_adv = _mesh.per_example(attack)(xb, yb, _mesh.example_keys(key, ib), eps)
        return evaluate.adversarial_checks(logits_fn, xb, yb, x_adv, norm=norm)

    run = _mesh.sharded(run_local, mesh, num_batched=3)
    n = x.shape[0]
    bs = _mesh.padded_size(min(batch_size, n), mesh)
    correct, clean = np.zeros((len(eps_values), n), bool), np.zeros(n, bool)
    for j, eps in enumerate(eps_values):
        for start in range(0, n, bs):
            stop = min(start + bs, n)
            checks = _mesh.map_batch(
                run, mesh, [x[start:stop], y[start:stop], np.arange(start, stop, dtype=np.int32)],
                [key, np.float32(eps)], size=bs)
            evaluate.validate_checks(checks, eps=eps, atol=atol, norm=norm, bounds=(lo, hi),
                                     offset=start)
            correct[j, start:stop] = checks["clean_ok"] & checks["adv_ok"]
            clean[start:stop] = checks["clean_ok"]
        if progress is not None:
            progress(eps, float(correct[j].mean()))
    return EpsCurve(eps=np.asarray(eps_values), accuracy=correct.mean(axis=1), correct=correct,
                    clean_accuracy=float(clean.mean()))


def certified_curve(logits_fn: _a.LogitsFn, x, y, eps_values: Sequence[float], *,
                    method: str = "ibp", norm: str = "linf", batch_size: int = 256,
                    bounds=(0.0, 1.0)) -> EpsCurve:
    """Certified accuracy at each eps (:mod:`robustjax.certify.verifier`): the lower side of the bracket.

    One compilation for the whole sweep (eps is traced). ``correct[j, i]``: example
    i is certified at eps j (which implies it is classified correctly).
    """
    certify.check_settings(0.0, norm, method)
    _checks.check_int("batch_size", batch_size, 1)
    eps_values = [float(e) for e in eps_values]
    for e in eps_values:
        _checks.check_scalar("eps_values", e)
    x = certify.check_inputs(x, bounds)
    y = np.asarray(y)
    k = evaluate.num_classes(logits_fn, x.shape[1:])
    fn = certify.make_bound_fn(logits_fn, method=method, norm=norm, bounds=bounds, upper=False)
    n = x.shape[0]
    bs = min(batch_size, n)
    correct = np.zeros((len(eps_values), n), bool)
    for start in range(0, n, bs):
        xb = evaluate.pad_batch(x[start:start + bs], bs)
        yb = evaluate.pad_batch(y[start:start + bs], bs)
        spec = certify.margin_spec(yb, k)
        own = np.eye(k, dtype=bool)[yb]
        for j, eps in enumerate(eps_values):
            lo, hi = fn(xb, np.float32(eps), spec)
            ok = certify.is_certified(np.where(own, np.inf, lo), np.where(own, np.inf, hi))
            correct[j, start:start + bs] = ok[:min(bs, n - start)]
    acc = correct.mean(axis=1)
    zero = [j for j, e in enumerate(eps_values) if e == 0]
    return EpsCurve(eps=np.asarray(eps_values), accuracy=acc, correct=correct,
                    clean_accuracy=float(acc[zero[0]]) if zero else float("nan"))


def masking_checks(curves: dict[str, EpsCurve], *, train_eps: Optional[float] = None,
                   same_norm: bool = True, monotone_tol: Optional[float] = None,
                   zero_tol: float = 0.05, gradient_free_tol: float = 0.01) -> list[dict]:
    """The gradient-masking checks on one model's curves ``{attack name: curve}``.

    Returns one dict per check, ``{"check", "attack", "passed", "detail"}``:

    * ``eps0_equals_clean``: at eps = 0 the accuracy is the clean accuracy
      (checked where the sweep includes 0).
    * ``non_increasing``: accuracy does not rise from one eps to a larger one by
      more than ``monotone_tol`` (default: two binomial standard errors of the
      larger value, at least one example).
    * ``reaches_zero``: at the largest eps, the strongest attack leaves at most
      ``zero_tol`` accuracy (an unbounded attack must reach 0).
    * ``gradient_free_not_stronger``: at ``train_eps`` (when the sweep's norm is
      the training norm, ``same_norm``), no gradient-free attack is more than
      ``gradient_free_tol`` below the best gradient attack.
    """
    out = []
    if not curves:
        raise ValueError("curves must hold at least one attack's curve")
    for name, c in curves.items():
        n = c.correct.shape[1]
        zero = np.flatnonzero(c.eps == 0)
        if zero.size:
            acc0 = float(c.accuracy[zero[0]])
            out.append(dict(check="eps0_equals_clean", attack=name,
                            passed=bool(abs(acc0 - c.clean_accuracy) < 0.5 / n),
                            detail=f"accuracy at eps 0 {acc0:.4f}, clean {c.clean_accuracy:.4f}"))
        order = np.argsort(c.eps, kind="stable")
        acc = c.accuracy[order]
        worst, detail = 0.0, "non-increasing"
        for k in range(1, len(acc)):
            tol = monotone_tol if monotone_tol is not None else max(
                2 * np.sqrt(acc[k] * (1 - acc[k]) / n), 1.0 / n)
            rise = acc[k] - acc[k - 1]
            if rise > tol and rise > worst:
                worst = rise
                detail = (f"accuracy rises by {rise:.4f} from eps {c.eps[order][k - 1]:g} to "
                          f"{c.eps[order][k]:g} (tolerance {tol:.4f})")
        out.append(dict(check="non_increasing", attack=name, passed=worst == 0.0,
                        detail=detail))
    last = {name: float(c.accuracy[np.argmax(c.eps)]) for name, c in curves.items()}
    best = min(last, key=last.get)
    top = max(float(c.eps.max()) for c in curves.values())
    out.append(dict(check="reaches_zero", attack=best, passed=last[best] <= zero_tol,
                    detail=f"accuracy {last[best]:.4f} at the largest eps {top:g} "
                           f"(tolerance {zero_tol})"))
    if train_eps is not None and same_norm:
        at = {}
        for name, c in curves.items():
            hit = np.flatnonzero(np.isclose(c.eps, train_eps))
            if hit.size:
                at[name] = float(c.accuracy[hit[0]])
        grad = {k: v for k, v in at.items() if k not in GRADIENT_FREE}
        for name in (k for k in at if k in GRADIENT_FREE):
            if not grad:
                continue
            strongest = min(grad, key=grad.get)
            gap = grad[strongest] - at[name]
            out.append(dict(check="gradient_free_not_stronger", attack=name,
                            passed=bool(gap <= gradient_free_tol),
                            detail=f"at eps {train_eps:g}: {name} {at[name]:.4f}, strongest "
                                   f"gradient attack {strongest} {grad[strongest]:.4f}"))
    return out
