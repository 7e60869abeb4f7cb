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
    assert len(blocks) == 1
    code = blocks[0].replace("../shared/data/mnist-10k", os.fspath(MNIST_10K))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    m = re.search(r"natural (\d+\.\d)%, PGD-40 (\d+\.\d)%", out.getvalue())
    assert m, out.getvalue()
    natural, robust = float(m.group(1)), float(m.group(2))
    assert natural >= 92 and robust <= 5, out.getvalue()
