"""The loss landscape of the inner maximisation over random restarts (Madry et al., Section 3).

The paper's argument that PGD is a "universal" first-order adversary rests on
two experiments (Section 3, Figures 1 and 2): PGD started from many points
drawn uniformly in the eps-ball around one example

* raises the loss along similar trajectories that plateau quickly (Figure 1:
  20 runs per example, loss against the iteration), and
* ends at local maxima whose loss values are concentrated, without outliers
  (Figure 2: histograms over 10^5 restarts per example, for a naturally and an
  adversarially trained network; adversarial training lowers those values).

:func:`restart_losses` computes both: for each example, ``restarts``
independent PGD runs, vectorised over restarts and processed in chunks of
``chunk_size`` restarts, so 10^5 restarts fit on one accelerator and nothing
recompiles between chunks. Restart ``r`` of example ``m`` starts from the key
``fold_in(fold_in(key, m), r)``, so the results do not depend on the chunk
size, and each run is exactly ``attacks.pgd`` on that one example with that
key. :func:`histograms` and :func:`summaries` turn the final losses into the
figure's data.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from robustjax import _checks
from robustjax.attacks import first_order as _a
from robustjax.evaluation import accuracy as evaluate
from robustjax.runtime import mesh as _mesh

__all__ = ["RestartLosses", "restart_losses", "histograms", "summaries"]


class RestartLosses(NamedTuple):
    """Result of :func:`restart_losses` for M examples and N restarts each.

    final: float32 ``[M, N]``, the loss at the last PGD iterate of every restart.
    fooled: bool ``[M, N]``, whether that iterate is misclassified.
    trajectories: float32 ``[M, T, K + 1]``, the loss at the start and after
      each of the K steps, for the first ``T = min(keep_trajectories, N)``
      restarts (the light lines of Figure 1).
    clean_loss: float32 ``[M]``, the loss at the clean example.
    """

    final: np.ndarray
    fooled: np.ndarray
    trajectories: np.ndarray
    clean_loss: np.ndarray


def _check_positive_int(name, value):
    _checks.check_int(name, value, 1)


def restart_losses(logits_fn: _a.LogitsFn, x, y, key: jax.Array, *, eps, step_size,
                   num_steps: int, restarts: int, chunk_size: int = 1000,
                   keep_trajectories: int = 20, norm: str = "linf", loss: str = "xent",
                   bounds=(0.0, 1.0), progress=None, mesh=None) -> RestartLosses:
    """PGD from ``restarts`` uniformly random starts per example; the loss along each run.

    Args:
      logits_fn: ``x -> logits`` of the model (eval mode).
      x, y: M examples ``[M, ...]`` in ``bounds`` and their int labels ``[M]``.
      key: PRNG key; restart ``r`` of example ``m`` uses
        ``fold_in(fold_in(key, m), r)`` as the key of ``attacks.pgd``.
      eps, step_size, num_steps, norm, loss: the PGD attack (the paper's MNIST
        setting: eps 0.3, step 0.01, 100 steps, L-inf, cross-entropy).
      restarts: N, random starts per example (the paper: 10^5).
      chunk_size: restarts per compiled call (one example's restarts are the
        batch); the last chunk is padded, so there is one compilation.
      keep_trajectories: how many restarts per example keep their whole loss
        trajectory (Figure 1 draws 20).
      bounds: valid input range.
      progress: optional ``progress(example, restarts_done)`` called on the host
        after each chunk.
      mesh: the devices (:func:`robustjax.runtime.mesh.make_mesh`); each chunk of
        restarts is split along its ``"data"`` axis (the chunk is rounded up to
        a multiple of the device count). Default: every device of every process.
    """
    _check_positive_int("restarts", restarts)
    _check_positive_int("chunk_size", chunk_size)
    _checks.check_int("num_steps", num_steps, 0)
    _checks.check_int("keep_trajectories", keep_trajectories, 0)
    _checks.check_scalar("eps", eps)
    _checks.check_scalar("step_size", step_size, positive=True)
    _checks.check_choice("norm", norm, tuple(_a.NORMS))
    lo, hi = _checks.check_bounds(bounds)
    x, y = evaluate.check_dataset(x, y, num_classes=evaluate.num_classes(logits_fn, np.shape(x)[1:]),
                                  bounds=bounds)
    objective = _a.attack_objective(loss)
    geometry = _a.NORMS[norm]
    chunk = min(chunk_size, restarts)

    def one_run(xm, ym, k):
        """One PGD run on a batch of one example: loss at each iterate [K + 1], fooled."""
        x0 = jnp.clip(xm + geometry.random_init(k, xm.shape, eps).astype(xm.dtype), lo, hi)

        def body(i, carry):
            x_adv, trace = carry
            value, x_next = _a.pgd_step(logits_fn, objective, geometry, xm, ym, x_adv,
                                        step_size, eps=eps, lo=lo, hi=hi)
            return x_next, trace.at[i].set(value[0])

        trace = jnp.zeros(num_steps + 1, jnp.float32)
        x_adv, trace = jax.lax.fori_loop(0, num_steps, body, (x0, trace))
        logits = logits_fn(x_adv)
        trace = trace.at[num_steps].set(objective(logits, ym)[0])
        return trace, _a.is_fooled(logits, ym)[0]

    mesh = _mesh.make_mesh() if mesh is None else mesh
    chunk = _mesh.padded_size(chunk, mesh)

    def run_local(r, xm, ym, key_m):
        keys = _mesh.example_keys(key_m, r)
        return jax.vmap(lambda k: one_run(xm[None], ym[None], k))(keys)

    run = _mesh.sharded(run_local, mesh, num_batched=1)
    m = x.shape[0]
    final = np.zeros((m, restarts), np.float32)
    fooled = np.zeros((m, restarts), bool)
    t = min(keep_trajectories, restarts)
    traj = np.zeros((m, t, num_steps + 1), np.float32)
    clean = np.asarray(objective(logits_fn(jnp.asarray(x)), jnp.asarray(y)), np.float32)
    for i in range(m):
        key_m = jax.random.fold_in(key, i)
        for start in range(0, restarts, chunk):
            stop = min(start + chunk, restarts)
            trace, fool = _mesh.map_batch(run, mesh, [np.arange(start, stop, dtype=np.int32)],
                                          [x[i], y[i], key_m], size=chunk)
            final[i, start:stop] = trace[:, -1]
            fooled[i, start:stop] = fool
            if start < t:
                traj[i, start:min(stop, t)] = trace[: min(stop, t) - start]
            if progress is not None:
                progress(i, stop)
    return RestartLosses(final=final, fooled=fooled, trajectories=traj, clean_loss=clean)


def histograms(final: np.ndarray, bins: int = 50) -> list[dict]:
    """Per example, the histogram of Figure 2: ``{"edges": [bins + 1], "counts": [bins]}``.

    Bins span that example's smallest to largest final loss; every restart is
    counted once (counts sum to the number of restarts).
    """
    _check_positive_int("bins", bins)
    out = []
    for row in np.asarray(final, np.float64):
        lo, hi = float(row.min()), float(row.max())
        if hi <= lo:
            hi = lo + max(abs(lo), 1.0) * 1e-6
        counts, edges = np.histogram(row, bins=bins, range=(lo, hi))
        out.append(dict(edges=edges.tolist(), counts=counts.astype(int).tolist()))
    return out


def summaries(res: RestartLosses) -> list[dict]:
    """Per example: mean, std, min, max of the final losses and the fraction of fooling restarts."""
    return [dict(mean=float(f.mean()), std=float(f.std()), min=float(f.min()),
                 max=float(f.max()), fooled_fraction=float(fo.mean()), clean_loss=float(c))
            for f, fo, c in zip(res.final.astype(np.float64), res.fooled, res.clean_loss)]
