"""Results of a suite as files: the JSON of every row and its markdown table.

The table is the paper's (Madry et al., Tables 1 and 2): one row per attack with its
source model, steps, restarts and accuracy, plus the per-example worst case.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

__all__ = ["markdown_table", "write_results"]


def _cell(v, fmt="{}"):
    return "-" if v is None else fmt.format(v)


def markdown_table(rows: Sequence[dict]) -> str:
    """Rows of results.json laid out like the paper's tables (Method, Steps, Restarts, Source, Accuracy).

    An AutoAttack row is followed by one line per attack of the ensemble with
    the robust accuracy after it.
    """
    lines = ["| Method | eps | Steps | Step size | Restarts | Source | Accuracy |",
             "|---|---:|---:|---:|---:|---|---:|"]
    for r in rows:
        name = r.get("name") or r["attack"]
        fgsm_or_nat = r["attack"] in ("natural", "fgsm")
        lines.append("| " + " | ".join([
            name, _cell(r["eps"], "{:g}"),
            "-" if fgsm_or_nat else _cell(r["steps"]),
            "-" if fgsm_or_nat else _cell(r["step_size"], "{:g}"),
            "-" if fgsm_or_nat else _cell(r["restarts"]),
            "-" if r["attack"] == "natural" else r["source"],
            f"{100 * r['accuracy']:.2f}%"]) + " |")
        for attack, acc in (r.get("after") or {}).items():
            lines.append(f"| &nbsp;&nbsp;after {attack} | | | | | | {100 * acc:.2f}% |")
    return "\n".join(lines)


def write_results(path: str, results: dict, *, table: bool = True) -> None:
    """Writes ``results`` to ``path`` atomically, and (``table``) its markdown next to it (``.md``)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, path)
    if table:
        md = os.path.splitext(path)[0] + ".md"
        with open(md + ".tmp", "w") as f:
            f.write(markdown_table(results["rows"]) + "\n")
        os.replace(md + ".tmp", md)
