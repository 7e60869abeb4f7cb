"""Certified robustness: sound bounds of any ``logits_fn`` over an eps-ball.

* :mod:`~robustjax.certify.verifier`: :func:`bounds`, :func:`certified`,
  :func:`certified_margins`, :func:`certified_loss` (IBP, Gowal et al. 2018; CROWN,
  Zhang et al. 2018; CROWN-IBP, Zhang et al. 2020; alpha-CROWN, Xu et al. 2021), in
  memory-sized chunks of examples.
* :mod:`~robustjax.certify.graph`: a function's jaxpr as a flat graph of primitives
  (sound or refused: named activations checked against the library's own).
* :mod:`~robustjax.certify.interval`: the sound interval (IBP) rule of each primitive.
* :mod:`~robustjax.certify.crown`: backward linear bound propagation with the batch on
  axis 0.
* :mod:`~robustjax.certify.memory`: per-example memory of the bounds, and chunks of
  examples within a budget.

The bracket (certified below, attacked above, per example) is
:mod:`robustjax.evaluation.bracket`: it needs the attacks.

Imports: :mod:`robustjax.models` (the layers' transposed convolution) and
:mod:`robustjax.runtime`.
"""

from robustjax.certify import crown, graph, interval, memory, verifier
from robustjax.certify.graph import UnsupportedPrimitiveError
from robustjax.certify.verifier import (MARGIN_RTOL, METHODS, NORMS, bounds, certified,
                                        certified_loss, certified_margins, check_inputs,
                                        check_settings, is_certified, make_bound_fn,
                                        margin_lower_bounds, margin_spec)

__all__ = ["verifier", "graph", "interval", "crown", "memory", "bounds", "certified",
           "certified_margins", "certified_loss", "margin_lower_bounds", "make_bound_fn",
           "margin_spec", "is_certified", "check_inputs", "check_settings",
           "UnsupportedPrimitiveError", "METHODS", "NORMS", "MARGIN_RTOL"]
