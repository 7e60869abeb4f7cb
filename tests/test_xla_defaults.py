"""robustjax.runtime.xla_defaults: flags added only when they can take effect, never over the user's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from robustjax.runtime import xla_defaults

FLAG = "--xla_cpu_experimental_ynn_fusion_type=dot"
NEW = dict(jaxlib_version=(0, 10, 2), backend_started=False)


def test_flags_to_add_rules():
    assert xla_defaults.flags_to_add("", environ={}, **NEW) == ((FLAG,), "added")
    other = "--xla_force_host_platform_device_count=4"
    assert xla_defaults.flags_to_add(other, environ={}, **NEW)[0] == (FLAG,)
    # The user's own value, in either spelling, is never changed.
    for mine in ("--xla_cpu_experimental_ynn_fusion_type=individual_dot",
                 "--xla_cpu_experimental_ynn_fusion_type"):
        assert xla_defaults.flags_to_add(mine, environ={}, **NEW)[0] == ()
    assert xla_defaults.flags_to_add("", environ={xla_defaults.ENV_VAR: "0"}, **NEW)[0] == ()
    assert xla_defaults.flags_to_add("", environ={}, jaxlib_version=(0, 6, 0),
                                     backend_started=False)[0] == ()
    added, reason = xla_defaults.flags_to_add("", environ={}, jaxlib_version=(0, 10, 2),
                                              backend_started=True)
    assert added == () and "already started" in reason


_PROBE = """
import json, os, sys
if sys.argv[1] == "start_backend_first":
    import jax.numpy as jnp
    jnp.ones(2).block_until_ready()
import robustjax, jax.numpy as jnp
float(jnp.sum(jnp.ones(3)))  # the backend starts with whatever XLA_FLAGS says now
print(json.dumps(robustjax.runtime.xla_defaults.status()))
"""


def _import_robustjax(mode="", **env):
    base = {k: v for k, v in os.environ.items()
            if k not in ("XLA_FLAGS", xla_defaults.ENV_VAR)}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=dict(base, **env),
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(xla_defaults._jaxlib_version() < xla_defaults._MIN_JAXLIB,
                    reason="jaxlib older than the one the defaults were measured with")
def test_import_adds_defaults_before_the_backend_starts_and_keeps_users_flags():
    st = _import_robustjax()
    assert st["added"] == [FLAG] and st["xla_flags"] == FLAG
    mine = "--xla_force_host_platform_device_count=2"
    st = _import_robustjax(XLA_FLAGS=mine)
    assert st["xla_flags"] == f"{mine} {FLAG}"
    users = "--xla_cpu_experimental_ynn_fusion_type=individual_dot"
    st = _import_robustjax(XLA_FLAGS=users)
    assert st["added"] == [] and st["xla_flags"] == users
    st = _import_robustjax(ROBUSTJAX_XLA_DEFAULTS="0")
    assert st["added"] == [] and st["xla_flags"] == ""
    st = _import_robustjax("start_backend_first")
    assert st["added"] == [] and "already started" in st["reason"]
