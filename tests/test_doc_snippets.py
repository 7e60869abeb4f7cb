"""The documentation's library snippets (docs/library.md, then docs/autoattack.md; and
docs/adaptive.md, docs/certified.md) run and print what the pages say they print."""

import contextlib
import io
import os
import re

import pytest

from conftest import REPO

# The snippets' claims are about hundreds of digits: 200 of the pages' 500 check them.
# Square (AutoAttack's last, gradient-free stage) rarely breaks what APGD and FAB left on
# a natural model; 1,000 of its 5,000 queries run the stage at a fifth of the cost.
EXAMPLES, SQUARE_QUERIES = 200, 1000


@pytest.mark.slow
def test_library_snippets(idx_dir):
    """Run on the real digits when present, else on the generated stand-in IDX files."""
    text = "".join((REPO / "docs" / page).read_text() for page in ("library.md", "autoattack.md"))
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    # The attack snippet, the suite snippet and the AutoAttack snippet, each continuing the last.
    assert len(blocks) == 3 and "PRNGKey(0), eps=0.1)\n" in blocks[2]
    namespace = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            code = block.replace("../shared/data/mnist-10k", os.fspath(idx_dir))
            code = code.replace("[:500]", f"[:{EXAMPLES}]").replace(
                "eps=0.1)\n", f"eps=0.1, num_queries={SQUARE_QUERIES})\n")
            exec(compile(code, "docs", "exec"), namespace)
    m = re.search(r"natural (\d+\.\d)%, PGD-40 (\d+\.\d)%", out.getvalue())
    assert m, out.getvalue()
    natural, robust = float(m.group(1)), float(m.group(2))
    assert natural >= 92 and robust <= 5, out.getvalue()
    # The suite's table: natural, FGSM, PGD, CW+ and the worst case, which is the lowest.
    acc = [float(v) for v in re.findall(r"\| ([\d.]+)% \|", out.getvalue())]
    assert len(acc) == 5 and acc[-1] == min(acc) and acc[0] >= 92, out.getvalue()
    assert acc[2] < acc[0]  # PGD at eps 0.1 breaks some of the digits
    # AutoAttack on the same digits at the same eps: at least as strong as PGD-40 there.
    m = re.search(r"clean (\d+\.\d)%, AutoAttack (\d+\.\d)%", out.getvalue())
    assert m, out.getvalue()
    assert float(m.group(1)) == pytest.approx(acc[0], abs=0.1)
    assert float(m.group(2)) <= acc[2] + 1.0
    assert "'apgd-ce'" in out.getvalue() and "'square'" in out.getvalue()


@pytest.mark.slow
def test_adaptive_snippet(tiny_runs, idx_dir):
    """docs/adaptive.md's snippet on a tiny trained workdir: it runs and prints its lines."""
    text = (REPO / "docs" / "adaptive.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    code = blocks[0].replace("../shared/data/mnist-10k", os.fspath(idx_dir)).replace(
        '"workdirs/mnist"', repr(tiny_runs.pgd)).replace("[:200]", "[:40]")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/adaptive.md", "exec"), {})
    text = out.getvalue()
    assert "| warning | zero-gradient | `round` |" in text, text
    given = float(re.search(r"PGD-40 as given: ([\d.]+)%", text).group(1))
    through = float(re.search(r"PGD-40 through BPDA: ([\d.]+)%", text).group(1))
    assert through <= given, text
    assert re.search(r"noise defence under EOT APGD-CE: [\d.]+%", text), text


@pytest.mark.slow
def test_min_norm_snippet(tiny_runs, idx_dir, tmp_path):
    """docs/min_norm.md's snippet on a tiny trained workdir: it runs and its curve is the
    clean accuracy at 0, then nonincreasing."""
    text = (REPO / "docs" / "min_norm.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    code = (blocks[0].replace("../shared/data/mnist-10k", os.fspath(idx_dir))
            .replace('"workdirs/mnist"', repr(tiny_runs.pgd)).replace("[:200]", "[:40]")
            .replace('"workdirs/mnist/fmn_linf"', repr(str(tmp_path / "fmn")))
            .replace("steps=100", "steps=10"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/min_norm.md", "exec"), {})
    text = out.getvalue()
    assert "FMN-Linf distances:" in text, text
    curve = [float(v) for v in re.search(r"accuracy at .*: \[(.*)\]", text).group(1).split()]
    assert len(curve) == 4 and all(a >= b for a, b in zip(curve, curve[1:])), text
    assert os.listdir(tmp_path / "fmn"), "the finished batches are stored"


@pytest.mark.slow
def test_smoothing_snippet(tiny_runs, idx_dir):
    """docs/certified.md's randomized-smoothing snippet on a tiny trained workdir (fewer
    samples): it runs and prints CERTIFY's and PREDICT's classes."""
    text = (REPO / "docs" / "certified.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1
    code = blocks[0].replace("../shared/data/mnist-10k", os.fspath(idx_dir)).replace(
        '"workdirs/smoothing/gaussian_0.25"', repr(tiny_runs.pgd)).replace(
        "n=10_000", "n=200").replace("[:10]", "[:4]")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "docs/certified.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("CERTIFY: [") and lines[1].startswith("PREDICT: ["), lines
