"""The runtime: devices, hosts, XLA flags and files of finished rows.

* :mod:`~robustjax.runtime.xla_defaults`: XLA flags robustjax adds when imported
  before JAX starts a backend (``ROBUSTJAX_XLA_DEFAULTS=0`` turns them off; the user's
  ``XLA_FLAGS`` win).
* :mod:`~robustjax.runtime.mesh`: one ``"data"`` axis over every device of every
  process: batches placed per process, results gathered, per-example keys,
  ``jax.distributed`` start-up.
* :mod:`~robustjax.runtime.jaxprs`: the one walker over a function's jaxpr (call
  primitives and their bodies), shared by the fast-gradient rewrite and the verifier.
* :mod:`~robustjax.runtime.rowstore`: finished rows of an evaluation on disk, so that
  tables resume.

Imports: nothing of robustjax (this is the bottom layer).
"""

from robustjax.runtime import jaxprs, mesh, rowstore, xla_defaults

__all__ = ["jaxprs", "mesh", "rowstore", "xla_defaults"]
