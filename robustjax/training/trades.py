"""TRADES: the robust training objective of Zhang et al. (ICML 2019), Eq. (5) and Algorithm 1.

TRADES trades natural accuracy for robustness explicitly:

    min_theta  E [ CE(f(x), y) + beta * max_{x' in B(x, eps)} KL(p(x) || p(x')) ],

where ``p = softmax(f)``. The inner maximisation is PGD on the KL term from a
small Gaussian start ``x + 0.001 * N(0, 1)`` (the official code); the outer
loss differentiates through both ``f(x)`` and ``f(x')``, with ``x'`` held
fixed (Danskin, as for the paper's objective). ``beta = 0`` is natural
training; the paper uses ``beta = 6`` on CIFAR-10 and MNIST.

Both parts are pure functions: :func:`trades_attack` has the attack
signature ``(logits_fn, x, y, key)`` (``y`` is not used: the KL target is the
model's own clean prediction) and :func:`trades_loss` takes logits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from robustjax import _checks
from robustjax.attacks import first_order as attacks
from robustjax.models import fastpath

__all__ = ["kl_divergence", "trades_attack", "trades_loss"]


def kl_divergence(p_logits: jax.Array, q_logits: jax.Array) -> jax.Array:
    """Per-example ``KL(softmax(p_logits) || softmax(q_logits))``, shape ``[B]``."""
    log_p = jax.nn.log_softmax(p_logits, axis=-1)
    log_q = jax.nn.log_softmax(q_logits, axis=-1)
    return jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1)


def trades_attack(logits_fn, x: jax.Array, y: jax.Array, key: jax.Array, *, eps,
                  step_size, num_steps: int, norm: str = "linf", init_std: float = 0.001,
                  bounds: tuple[float, float] = (0.0, 1.0)) -> jax.Array:
    """TRADES' inner maximisation (Algorithm 1, lines 5-7): PGD ascent on ``KL(p(x) || p(x'))``.

    Starts at ``x + init_std * N(0, 1)`` (projected onto the ball and clipped
    to ``bounds``) and takes ``num_steps`` steps of :func:`robustjax.attacks.first_order.pgd_step`
    with the KL to the clean prediction as the objective. ``y`` is accepted
    for the common attack signature and not used. Returns ``x'`` with the
    shape and dtype of ``x``; its gradient is not tracked (``stop_gradient``).
    """
    _checks.check_scalar("eps", eps)
    _checks.check_scalar("step_size", step_size, positive=True)
    _checks.check_int("num_steps", num_steps, 0)
    _checks.check_choice("norm", norm, tuple(attacks.NORMS))
    lo, hi = _checks.check_bounds(bounds)
    geometry = attacks.NORMS[norm]
    logits_fn = fastpath.auto(logits_fn)
    clean_logits = jax.lax.stop_gradient(logits_fn(x))
    noise = init_std * jax.random.normal(key, x.shape, jnp.float32)
    x_adv = geometry.to_box(x, x + noise.astype(x.dtype), eps, lo, hi)

    def objective(logits, target_logits):
        return kl_divergence(target_logits, logits)

    def body(_, x_adv):
        return attacks.pgd_step(logits_fn, objective, geometry, x, clean_logits, x_adv,
                                step_size, eps=eps, lo=lo, hi=hi)[1]

    x_adv = jax.lax.fori_loop(0, num_steps, body, x_adv)
    return jax.lax.stop_gradient(x_adv)


def trades_loss(clean_logits: jax.Array, adv_logits: jax.Array, y: jax.Array, *,
                beta: float) -> jax.Array:
    """TRADES' outer loss (Eq. 5): ``mean CE(f(x), y) + beta * mean KL(p(x) || p(x'))``.

    Gradients flow through both logits, as in the official implementation
    (``KLDivLoss(log_softmax(f(x')), softmax(f(x)))`` averaged over the batch).
    """
    ce = optax.softmax_cross_entropy_with_integer_labels(clean_logits, y).mean()
    return ce + beta * kl_divergence(clean_logits, adv_logits).mean()
