"""Training the base classifier of a smoothed classifier: Gaussian data augmentation
(Cohen, Rosenfeld & Kolter, ICML 2019, Section 4) and SmoothAdv (Salman et al., "Provably
Robust Deep Learning via Adversarially Trained Smoothed Classifiers", NeurIPS 2019).

Cohen et al. train f on ``x + delta``, ``delta ~ N(0, sigma^2 I)`` (:func:`gaussian_noise`),
so that f is accurate under the noise the smoothed classifier adds. Salman et al. attack
the *soft* smoothed classifier ``G(x)_c = E_delta[softmax(f(x + delta))_c]``, estimated
with m noise draws fixed for the attack (their Eq. 6 and Algorithm 1, "SmoothAdv_PGD"):

    x' = argmax_{||x' - x||_2 <= eps}  -log( (1/m) sum_i softmax(f(x' + delta_i))_y ),

by L2 PGD from x (normalised gradient steps, projection onto the ball and the box), and
train f with the cross-entropy on every ``x' + delta_i`` with the same draws
(:func:`smoothadv_attack` returns them). With m = 1 this is PGD on f under one noise draw.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from robustjax import _checks
from robustjax.attacks import geometry

__all__ = ["gaussian_noise", "smooth_log_probs", "smoothadv_attack"]


def gaussian_noise(key: jax.Array, x: jax.Array, sigma) -> jax.Array:
    """``x + sigma * N(0, I)``, not clipped to the box (Cohen et al.'s training)."""
    return x + (sigma * jax.random.normal(key, x.shape, jnp.float32)).astype(x.dtype)


def smooth_log_probs(logits_fn, x: jax.Array, noise: jax.Array) -> jax.Array:
    """``log((1/m) sum_i softmax(f(x + noise_i)))``, ``[B, classes]``, for noise ``[m, B, ...]``:
    the log of the soft smoothed classifier's Monte Carlo estimate (Salman et al., Eq. 6)."""
    m = noise.shape[0]
    z = (x[None] + noise).reshape((-1,) + x.shape[1:])
    log_p = jax.nn.log_softmax(logits_fn(z).astype(jnp.float32), axis=-1)
    return jax.nn.logsumexp(log_p.reshape((m, x.shape[0], -1)), axis=0) - jnp.log(m)


def smoothadv_attack(logits_fn, x: jax.Array, y: jax.Array, key: jax.Array, *, sigma, eps,
                     step_size, num_steps: int, num_noise: int = 1,
                     bounds: tuple[float, float] = (0.0, 1.0)):
    """SmoothAdv's PGD (Salman et al. 2019, Algorithm 1): L2 ascent on the soft smoothed
    classifier's cross-entropy with ``num_noise`` Gaussian draws held fixed.

    Returns ``(x_adv, noise)``: the adversarial inputs (in the L2 ball of radius ``eps``
    around ``x`` and in ``bounds``; their gradient is not tracked) and the draws
    ``[num_noise, *x.shape]``, which the training loss reuses.
    """
    _checks.check_scalar("sigma", sigma, positive=True)
    _checks.check_scalar("eps", eps)
    _checks.check_scalar("step_size", step_size, positive=True)
    _checks.check_int("num_steps", num_steps, 0)
    _checks.check_int("num_noise", num_noise, 1)
    lo, hi = _checks.check_bounds(bounds)
    l2 = geometry.NORMS["l2"]
    noise = (sigma * jax.random.normal(key, (num_noise,) + x.shape, jnp.float32)).astype(x.dtype)

    def objective(z):
        log_p = smooth_log_probs(logits_fn, z, noise)
        return -jnp.sum(jnp.take_along_axis(log_p, y[:, None], axis=1))

    def body(_, x_adv):
        grad = jax.grad(objective)(x_adv)
        return l2.to_box(x, x_adv + step_size * l2.direction(grad, x_adv, lo, hi), eps, lo, hi)

    x_adv = jax.lax.fori_loop(0, num_steps, body, x)
    return jax.lax.stop_gradient(x_adv), noise
