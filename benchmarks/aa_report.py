"""What the AutoAttack comparisons share: pyautoattack's log lines read back, the table.

Used by benchmarks/autoattack_compare.py (a trained MNIST workdir) and
benchmarks/zoo_autoattack_compare.py (a converted published architecture).
"""

from __future__ import annotations

import logging
import re

_NAMES = {"APGD-CE": "apgd-ce", "APGD-T": "apgd-t", "FAB-T": "fab-t", "SQUARE": "square",
          "APGD-DLR": "apgd-dlr", "FAB": "fab"}


class Capture(logging.Handler):
    """Collects pyautoattack's 'robust accuracy after X: Y% (total time Z s)' lines."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.after, self.total = {}, {}

    def emit(self, record):
        m = re.match(r"robust accuracy after ([A-Z\-]+): ([\d.]+)% \(total time ([\d.]+) s\)",
                     record.getMessage())
        if m:
            name = _NAMES.get(m.group(1), m.group(1).lower())
            self.after[name] = float(m.group(2)) / 100
            self.total[name] = float(m.group(3))


def peer_result(logits_fn, x, y, x_adv, cap: Capture, seconds: float, *, eps, norm) -> dict:
    """pyautoattack's result, counted only after its adversarial examples pass robustjax's
    checks (eps-ball, bounds, finite): accuracies, per-attack seconds, per-example bits."""
    import jax
    import numpy as np

    from robustjax.evaluation import accuracy as evaluate

    checks = jax.tree_util.tree_map(np.asarray, evaluate.adversarial_checks(
        logits_fn, x, y.astype(np.int32), x_adv, norm=norm))
    evaluate.validate_checks(checks, eps=eps, atol=1e-5, norm=norm, bounds=(0.0, 1.0))
    correct = checks["clean_ok"] & checks["adv_ok"]
    prev, attack_seconds = 0.0, {}
    for k, v in cap.total.items():  # pyautoattack logs cumulative times
        attack_seconds[k], prev = v - prev, v
    return dict(seconds=seconds, clean=float(checks["clean_ok"].mean()),
                robust=float(correct.mean()), after=cap.after,
                attack_seconds=attack_seconds, correct=bits(correct))


def bits(correct) -> str:
    """Per-example robustness as a string of 0/1 (example i at position i)."""
    return "".join("1" if c else "0" for c in correct)


def report(out):
    import numpy as np

    rj, pa = out.get("robustjax"), out.get("pyautoattack")
    names = list((rj or pa)["after"])
    print("\n| attack | robustjax acc. | pyautoattack acc. | robustjax s | pyautoattack s "
          "| speed-up |")
    print("|---|---:|---:|---:|---:|---:|")

    def cell(d, k, fmt):
        return fmt.format(d[k]) if d is not None and k is not None else "-"

    for name in ["clean"] + names + ["total"]:
        if name == "clean":
            accs = [cell(d, "clean", "{:.2%}") for d in (rj, pa)]
            secs = ["", ""]
        elif name == "total":
            accs = [cell(d, "robust", "{:.2%}") for d in (rj, pa)]
            secs = [cell(d, "seconds", "{:.1f}") for d in (rj, pa)]
        else:
            accs = [("{:.2%}".format(d["after"][name]) if d and name in d["after"] else "-")
                    for d in (rj, pa)]
            secs = [("{:.1f}".format(d["attack_seconds"][name])
                     if d and name in d["attack_seconds"] else "-") for d in (rj, pa)]
        ratio = "-"
        if rj and pa:
            a = rj["seconds"] if name == "total" else rj["attack_seconds"].get(name)
            b = pa["seconds"] if name == "total" else pa["attack_seconds"].get(name)
            if a and b:
                ratio = f"{b / a:.2f}x"
        print(f"| {name} | {accs[0]} | {accs[1]} | {secs[0]} | {secs[1]} | "
              f"{ratio if name != 'clean' else ''} |")
    if rj and pa:
        a, b = (np.frombuffer(d["correct"].encode(), np.uint8) == ord("1") for d in (rj, pa))
        out["disagreement"] = dict(robust_only_in_robustjax=int(np.sum(a & ~b)),
                                   robust_only_in_pyautoattack=int(np.sum(~a & b)))
        print(f"\nper-example disagreement: {int(np.sum(a & ~b))} examples robust under "
              f"robustjax's AutoAttack but broken by pyautoattack's, {int(np.sum(~a & b))} "
              f"the other way round (of {len(a)}); difference "
              f"{100 * (rj['robust'] - pa['robust']):+.2f} points (robustjax - pyautoattack)")
