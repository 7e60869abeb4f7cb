"""First-order attacks: the inner maximisation of Madry et al. (ICLR 2018).

The paper's saddle-point problem (Eq. 2.1) is

    min_theta  E_(x,y) [ max_{delta in S} L(theta, x + delta, y) ],

and its inner maximisation is solved with projected gradient descent
(Section 2.1, Eq. 2.2 for the single FGSM step, the iterated update
x <- Pi_{x+S}(x + alpha * sign(grad_x L)) for PGD, with a uniform random start).

Everything here is a pure function of ``(logits_fn, x, y, key)`` plus explicit
keyword settings. ``logits_fn(x) -> logits`` is a closure over the model's
parameters; which batch-norm mode it uses is the caller's choice. Images are
floats in ``bounds`` (default [0, 1]) with the batch on axis 0; labels are
integer class ids. An attack is composed of small parts, each usable alone:

* a loss (:func:`xent_loss`, :func:`cw_loss`) turned into the quantity the
  attacker ascends by :func:`attack_objective`;
* a norm geometry (:data:`LINF`, :data:`L2`, :data:`L1`): random start,
  steepest-ascent direction, projection onto the ball (and the box) and the
  distance it measures;
* a step size: a float or an optax schedule ``step -> size``.

Settings that change the compiled program (norm, loss, steps, restarts,
targeted) are static Python values; ``eps`` and the images may be traced, so
attacks can be jitted and vmapped (for example over eps).
"""

from __future__ import annotations

from typing import Callable, Union

import jax
import jax.numpy as jnp

from robustjax import _checks
from robustjax.models import fastpath
# The norm geometries live in robustjax.attacks.geometry; their names are part of this module's API.
from robustjax.attacks.geometry import L1, L2, LINF, NORMS, Norm, l1_geometry  # noqa: F401

__all__ = [
    "LogitsFn", "Norm", "LINF", "L2", "L1", "NORMS", "LOSSES", "l1_geometry",
    "xent_loss", "cw_loss", "margin", "attack_objective", "is_fooled",
    "fgsm", "fgsm_rs", "pgd", "pgd_step", "select_best_restart",
]

Array = jax.Array
LogitsFn = Callable[[Array], Array]
StepSize = Union[float, Callable[[Array], Array]]


# ----------------------------------------------------------------------------
# Losses (paper Section 2 for cross-entropy, Section 5 / Table 1 for CW, CW+)
# ----------------------------------------------------------------------------

def xent_loss(logits: Array, labels: Array) -> Array:
    """Per-example softmax cross-entropy L(theta, x, y) of the paper's Eq. (2.1)."""
    logz = jax.nn.logsumexp(logits, axis=-1)
    return logz - jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]


def margin(logits: Array, labels: Array) -> Array:
    """Per-example margin max_{j != y} z_j - z_y; positive iff ``labels`` is not the argmax."""
    label_logit = jnp.take_along_axis(logits, labels[:, None], axis=-1)[:, 0]
    mask = jax.nn.one_hot(labels, logits.shape[-1], dtype=bool)
    other = jnp.max(jnp.where(mask, -jnp.inf, logits), axis=-1)
    return other - label_logit


def cw_loss(logits: Array, labels: Array, kappa: float = 0.0) -> Array:
    """Carlini-Wagner margin loss, clipped at the confidence kappa (paper Table 1, "CW"/"CW+").

    Returns ``min(max_{j != y} z_j - z_y, kappa)``: the negative of C&W's f_6
    objective ``max(z_y - max_{j != y} z_j, -kappa)``, so an untargeted attack
    *maximises* it, like the cross-entropy. It grows until the example is
    misclassified by a margin of kappa and is flat after that. Madry's
    ``mnist_challenge`` writes the same loss as ``-relu(z_y - z_wrong + kappa)``,
    which differs from this one by the constant kappa. kappa=0 is the paper's
    "CW" row and kappa=50 its "CW+" row.
    """
    return jnp.minimum(margin(logits, labels), kappa)


LOSSES = ("xent", "cw")


def attack_objective(loss: str = "xent", *, targeted: bool = False,
                     cw_kappa: float = 0.0) -> Callable[[Array, Array], Array]:
    """The per-example quantity an attack ascends, ``(logits, labels) -> [B]``.

    Untargeted (``labels`` are the true classes): the loss itself, which the
    inner maximisation of Eq. (2.1) maximises. Targeted (``labels`` are target
    classes): the attack minimises the loss towards the target, i.e. ascends
    ``-xent(logits, target)``, or for CW ascends ``min(z_t - max_{j != t} z_j,
    kappa)`` (C&W's targeted f_6, the margin ``max_{j != t} z_j - z_t`` clipped
    below at ``-kappa`` and then negated).
    """
    _checks.check_choice("loss", loss, LOSSES)
    if loss == "xent":
        return (lambda lg, lb: -xent_loss(lg, lb)) if targeted else xent_loss
    if targeted:
        return lambda lg, lb: jnp.minimum(-margin(lg, lb), cw_kappa)
    return lambda lg, lb: cw_loss(lg, lb, cw_kappa)


def is_fooled(logits: Array, labels: Array, *, targeted: bool = False) -> Array:
    """Per-example attack success: argmax != label, or == target when ``targeted``."""
    pred = jnp.argmax(logits, axis=-1)
    return pred == labels if targeted else pred != labels


def _schedule(step_size: StepSize) -> Callable[[Array], Array]:
    if callable(step_size):
        return step_size
    return lambda _: step_size


# ----------------------------------------------------------------------------
# FGSM (Eq. 2.2) and PGD (Section 2.1)
# ----------------------------------------------------------------------------

def _objective_grad(logits_fn, objective, x_adv, y):
    def total(z):
        return jnp.sum(objective(_checks.checked_logits(logits_fn, z), y))
    return jax.grad(total)(x_adv)


def fgsm(logits_fn: LogitsFn, x: Array, y: Array, *, eps, loss: str = "xent",
         targeted: bool = False, cw_kappa: float = 0.0,
         bounds: tuple[float, float] = (0.0, 1.0)) -> Array:
    """Fast Gradient Sign Method, the paper's Eq. (2.2): x + eps * sign(grad_x L(theta, x, y)).

    The result is clipped to ``bounds``. With ``targeted=True``, ``y`` holds
    target classes and the step descends the loss towards them. Equals one
    :func:`pgd` step of size ``eps`` without random start.
    """
    _checks.check_xy(x, y, targeted=targeted)
    _checks.check_scalar("eps", eps)
    _checks.check_scalar("cw_kappa", cw_kappa)
    lo, hi = _checks.check_bounds(bounds)
    objective = attack_objective(loss, targeted=targeted, cw_kappa=cw_kappa)
    grad = _objective_grad(fastpath.auto(logits_fn), objective, x, y)
    return jnp.clip(x + eps * jnp.sign(grad), lo, hi).astype(x.dtype)


def fgsm_rs(logits_fn: LogitsFn, x: Array, y: Array, key: Array, *, eps,
            step_size=None, bounds: tuple[float, float] = (0.0, 1.0)) -> Array:
    """FGSM from a random start, Fast AT (Wong, Rice & Kolter, ICLR 2020, Algorithm 3).

    ``delta ~ U(-eps, eps)`` (the start clipped to ``bounds``), one signed
    gradient step of ``step_size`` (default ``1.25 * eps``, the paper's
    alpha), then projection onto the eps-ball and clipping to ``bounds``:
    exactly one L-inf :func:`pgd` step from a random start.
    """
    _checks.check_scalar("eps", eps)
    if step_size is None:
        alpha = lambda _: 1.25 * eps  # noqa: E731; eps may be traced (eps ramp)
    else:
        _checks.check_scalar("step_size", step_size, positive=True)
        alpha = step_size
    return pgd(logits_fn, x, y, key, eps=eps, step_size=alpha, num_steps=1,
               random_start=True, bounds=bounds)


def _pgd_single(logits_fn, objective, geometry: Norm, x, y, key, *, eps, schedule,
                num_steps, random_start, lo, hi, unroll):
    """One PGD run from one start; the loop is a ``lax.fori_loop`` over steps."""
    if random_start:
        delta = geometry.random_init(key, x.shape, eps).astype(x.dtype)
        x_adv = jnp.clip(x + delta, lo, hi)
    else:
        x_adv = x

    def step(i, x_adv):
        return pgd_step(logits_fn, objective, geometry, x, y, x_adv, schedule(i), eps=eps,
                        lo=lo, hi=hi)[1]

    if num_steps == 0:
        return x_adv
    return jax.lax.fori_loop(0, num_steps, step, x_adv, unroll=min(unroll, num_steps))


def pgd_step(logits_fn, objective, geometry: Norm, x, y, x_adv, step_size, *, eps, lo, hi):
    """One PGD iteration (Section 2.1): ``(objective at x_adv [B], next iterate)``.

    The next iterate is ``Pi(x_adv + step_size * ascent(grad))``, ``Pi`` the
    geometry's projection onto the ball around ``x`` and the box (``Norm.to_box``).
    The objective value comes with the gradient at no extra cost; the loss
    landscape (:mod:`robustjax.evaluation.landscape`) records it along each trajectory.
    ``logits_fn`` goes through :func:`robustjax.models.fastpath.auto` (fast input
    gradients for stock convolution and pooling layers on the CPU).
    """
    logits_fn = fastpath.auto(logits_fn)

    def total(z):
        value = objective(_checks.checked_logits(logits_fn, z), y)
        return jnp.sum(value), value

    grad, value = jax.grad(total, has_aux=True)(x_adv)
    x_new = x_adv + step_size * geometry.direction(grad, x_adv, lo, hi)
    return value, geometry.to_box(x, x_new, eps, lo, hi)


def select_best_restart(logits_fn: LogitsFn, x_advs: Array, y: Array, *,
                        loss: str = "xent", targeted: bool = False,
                        cw_kappa: float = 0.0) -> Array:
    """Per example, the best of several candidate adversarial inputs (paper Table 1, "restarts").

    ``x_advs`` has shape ``[R, B, ...]``. For each example, a candidate that
    fools the model wins (the one with the highest objective among those that
    do); if none does, the one with the highest objective. Ties go to the
    lowest restart index.
    """
    objective = attack_objective(loss, targeted=targeted, cw_kappa=cw_kappa)
    r, b = x_advs.shape[:2]
    logits = _checks.checked_logits(logits_fn, x_advs.reshape((r * b,) + x_advs.shape[2:]))
    logits = logits.reshape(r, b, -1)
    yr = jnp.broadcast_to(y, (r, b))
    value = jax.vmap(objective)(logits, yr)
    fooled = jax.vmap(lambda lg, lb: is_fooled(lg, lb, targeted=targeted))(logits, yr)
    any_fooled = jnp.any(fooled, axis=0)
    score = jnp.where(any_fooled[None] & ~fooled, -jnp.inf, value)
    best = jnp.argmax(score, axis=0)  # [B]; argmax returns the first maximum
    return jnp.take_along_axis(
        x_advs, best.reshape((1, b) + (1,) * (x_advs.ndim - 2)), axis=0)[0]


def pgd(logits_fn: LogitsFn, x: Array, y: Array, key: Array, *, eps, step_size: StepSize,
        num_steps: int, norm: str = "linf", loss: str = "xent", cw_kappa: float = 0.0,
        random_start: bool = True, restarts: int = 1, targeted: bool = False,
        bounds: tuple[float, float] = (0.0, 1.0), unroll: int = 1) -> Array:
    """Projected gradient descent on the loss, the paper's inner maximiser (Section 2.1).

    Iterates ``x <- Pi_{x+S}(x + step_size * d)`` for ``num_steps`` steps,
    where ``d`` is the steepest-ascent direction for ``norm`` (sign of the
    gradient for ``"linf"``, the per-example normalised gradient for
    ``"l2"``, the signs of the top 1% of gradient coordinates with unit L1
    norm for ``"l1"``) and ``Pi`` projects onto the eps-ball around ``x`` and
    the box ``bounds`` (for L1 exactly onto their intersection; see
    :class:`Norm`). The loop is a ``jax.lax.fori_loop``.

    Args:
      logits_fn: ``x -> logits [B, K]``, a closure over the model's parameters.
      x: clean inputs ``[B, ...]`` inside ``bounds``.
      y: int labels ``[B]``: true classes, or target classes if ``targeted``.
      key: PRNG key for the random start (may be None without random start and
        restarts). With ``restarts=R > 1``, restart
        ``i`` uses ``jax.random.split(key, R)[i]``, exactly as if
        ``pgd(..., key=that_key, restarts=1)`` had been called.
      eps: radius of the ball (>= 0), in the units of ``x``.
      step_size: float > 0, or an optax-style schedule ``step -> size``.
      num_steps: number of gradient steps (>= 0).
      norm: ``"linf"`` (the paper's threat model), ``"l2"`` or ``"l1"``;
        for ``"l1"``, ``step_size`` is the L1 length of a step.
      loss: ``"xent"`` (cross-entropy) or ``"cw"`` (:func:`cw_loss`).
      cw_kappa: CW confidence kappa (0: "CW", 50: "CW+" in Table 1).
      random_start: start uniformly inside the ball (the paper's default).
      restarts: independent random starts, run vectorised (vmap, which folds
        them into the batch); per example the best is kept, see
        :func:`select_best_restart`.
      targeted: ``y`` are targets; the attack minimises the loss towards them.
      bounds: valid input range; every iterate is clipped to it.
      unroll: iterations of the ``fori_loop`` body unrolled per trip (speed
        only; results are identical).

    Returns:
      Adversarial inputs with the shape and dtype of ``x``.
    """
    _checks.check_xy(x, y, targeted=targeted)
    _checks.check_scalar("eps", eps)
    _checks.check_scalar("step_size", step_size, positive=True)
    _checks.check_scalar("cw_kappa", cw_kappa)
    _checks.check_int("num_steps", num_steps, 0)
    _checks.check_int("restarts", restarts, 1)
    _checks.check_int("unroll", unroll, 1)
    _checks.check_choice("norm", norm, tuple(NORMS))
    lo, hi = _checks.check_bounds(bounds)
    if key is None and (random_start or restarts > 1):
        raise ValueError("key must be a jax.random key when random_start=True or "
                         "restarts > 1, got None")
    objective = attack_objective(loss, targeted=targeted, cw_kappa=cw_kappa)
    logits_fn = fastpath.auto(logits_fn)

    def run(k):
        return _pgd_single(logits_fn, objective, NORMS[norm], x, y, k, eps=eps,
                           schedule=_schedule(step_size), num_steps=num_steps,
                           random_start=random_start, lo=lo, hi=hi, unroll=unroll)

    if restarts == 1:
        return run(key)
    x_advs = jax.vmap(run)(jax.random.split(key, restarts))
    return select_best_restart(logits_fn, x_advs, y, loss=loss, targeted=targeted,
                               cw_kappa=cw_kappa)
