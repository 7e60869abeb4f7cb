"""Running the experiment entry points from tests: in this process, or as a real process.

``in_process`` runs ``app.run(module.main, argv)`` here: absl parses the flags
with the module's validators and ``main`` runs with the entry point's
one-line-error wrapper, so flag validation and error messages are checked
without paying a Python start, the imports and cold compiles. Every entry
point module defines its own flags (many share names), so the experiments
package is imported afresh, with its flags removed first, for each call.

``subprocess_run`` is the real thing, kept (at least once per entry point) for the
exit-status contract and for what only a process shows (signals, devices).

Real processes compile with XLA's backend optimisation level 0
(``fast_compile_env``): these runs are a few steps on a few examples, so
compiling is nearly all of their time, and level 0 compiles in about 40% of
it (the programs then run about 2.5x slower, which tiny runs do not feel).
What they check is the plumbing (files, flags, resume, exit status, equal
results across processes), which does not depend on it; the library's
numerics are checked by the other tests, compiled as users compile them.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import os
import subprocess
import sys
import traceback
from typing import NamedTuple

from absl import app, flags
from absl import logging as absl_logging

from conftest import REPO


def fast_compile_env(environ=None, **extra) -> dict:
    """``environ`` (default: this process's) for a tiny run in a real process: CPU, XLA's
    backend optimisation level 0 added to the user's XLA_FLAGS, plus ``extra``."""
    env = dict(os.environ if environ is None else environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
    env.update(extra)
    return env


class Completed(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def fresh_module(name: str):
    """``name`` imported again, with every flag the experiments package defined removed."""
    fv = flags.FLAGS
    for module, defined in list(fv.flags_by_module_dict().items()):
        if module.split(".")[0] in ("experiments", "benchmarks"):
            for flag in list(defined):  # (delattr edits these lists)
                if flag.name in fv:
                    delattr(fv, flag.name)
    for loaded in [m for m in sys.modules if m.split(".")[0] in ("experiments", "benchmarks")]:
        del sys.modules[loaded]
    return importlib.import_module(name)


@contextlib.contextmanager
def _logging_restored():
    """The entry points configure the robustjax logger and absl's verbosity: undo it."""
    log = logging.getLogger("robustjax")
    saved = (log.level, list(log.handlers), log.propagate, absl_logging.get_verbosity())
    try:
        yield
    finally:
        log.setLevel(saved[0])
        log.handlers[:] = saved[1]
        log.propagate = saved[2]
        absl_logging.set_verbosity(saved[3])


def in_process(module: str, *args: str, env: dict | None = None) -> Completed:
    """``python -m module args`` run in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    main = fresh_module(module).main
    saved_env = {k: os.environ.get(k) for k in (env or {})}
    code = 0
    with _logging_restored(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        os.environ.update(env or {})
        try:
            flags.FLAGS.unparse_flags()
            app.run(main, argv=[module, *args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # what Python does with an uncaught exception
            traceback.print_exc()
            code = 1
        finally:
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    return Completed(code, out.getvalue(), err.getvalue())


def subprocess_run(module: str, *args: str, devices: int | None = None,
                   timeout: float = 600, cwd=None, **env) -> Completed:
    """``python -m module args`` as a real process on CPU (``devices`` CPU devices), from the
    repository or from ``cwd`` (the repository then first on ``PYTHONPATH``)."""
    full = fast_compile_env(**env)
    if devices is not None:
        full["JAX_NUM_CPU_DEVICES"] = str(devices)
    if cwd is not None:
        full["PYTHONPATH"] = os.pathsep.join(
            [str(REPO)] + [q for q in full.get("PYTHONPATH", "").split(os.pathsep) if q])
    p = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd or REPO, env=full,
                       capture_output=True, text=True, timeout=timeout)
    return Completed(p.returncode, p.stdout, p.stderr)
