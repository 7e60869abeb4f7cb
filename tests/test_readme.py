"""The README's library snippet runs and prints what the README says it prints."""

import contextlib
import io
import os
import re

import pytest

from conftest import MNIST_10K, REPO, mnist_available


@pytest.mark.skipif(not mnist_available(), reason="shared/data/mnist-10k not present")
def test_readme_snippet(monkeypatch):
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2  # the attack snippet, then the suite snippet that continues it
    namespace = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            code = block.replace("../shared/data/mnist-10k", os.fspath(MNIST_10K))
            exec(compile(code, "README.md", "exec"), namespace)
    m = re.search(r"natural (\d+\.\d)%, PGD-40 (\d+\.\d)%", out.getvalue())
    assert m, out.getvalue()
    natural, robust = float(m.group(1)), float(m.group(2))
    assert natural >= 92 and robust <= 5, out.getvalue()
    # The suite's table: natural, FGSM, PGD, CW+ and the worst case, which is the lowest.
    acc = [float(v) for v in re.findall(r"\| ([\d.]+)% \|", out.getvalue())]
    assert len(acc) == 5 and acc[-1] == min(acc) and acc[0] >= 92, out.getvalue()
    assert acc[2] < acc[0]  # PGD at eps 0.1 breaks some of the digits
