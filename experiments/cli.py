"""Command-line conventions of the entry points: errors as one line and a non-zero exit.

* Configuration and data errors (``ValueError``, which includes
  ``robustjax.data.datasets.DataError``, an invalid adversarial example, a diverged
  run and unreadable checkpoints; ``FileNotFoundError``; a workdir in use by
  another process): ``error: <message>`` on stderr and exit status 1.
* Preemption (SIGTERM during training, after the checkpoint is saved): one
  line and exit status 143 (128 + SIGTERM), so a scheduler or script sees
  that the run is not finished; rerunning resumes.
* Usage errors (``app.UsageError``, flag validators): absl's usual message and
  status.
* Several processes: a collective that fails because another process died
  gives one line and exit status 1 at once (otherwise JAX would wait for the
  dead process in its shutdown barrier until the heartbeat timeout, then abort).

``--verbose`` (or ``ROBUSTJAX_TRACEBACK=1``) re-raises, with the traceback.

Several processes: every entry point takes ``--distributed`` (JAX's cluster
auto-detection: TPU pod slices, SLURM, Open MPI, Kubernetes) or an explicit
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (N
processes on one machine, or any launcher), and starts ``jax.distributed``
before anything else (:func:`robustjax.runtime.mesh.initialize`). Every process then
computes on its share of each batch; process 0 alone writes files and prints
progress (the others log warnings and errors only).
"""

from __future__ import annotations

import functools
import logging
import os
import sys

import jax
from absl import app, flags

flags.DEFINE_bool("verbose", False, "On an error, show the Python traceback, not one line.")
flags.DEFINE_bool("distributed", False, "Start jax.distributed by JAX's cluster auto-detection "
                  "(TPU pod slice, SLURM, Open MPI, Kubernetes) before anything else.")
flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0's coordinator, for "
                    "an explicit multi-process launch (with --num_processes, --process_id).")
flags.DEFINE_integer("num_processes", None, "Processes in an explicit multi-process launch.",
                     lower_bound=1)
flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.",
                     lower_bound=0)
flags.DEFINE_integer("heartbeat_timeout", None, "Seconds after which the other processes give "
                     "up on one that stopped answering (JAX's default: 100).", lower_bound=1)

PREEMPTED_EXIT = 143


class DistributedStartError(RuntimeError):
    """jax.distributed could not start (no coordinator, a timeout, a bad address)."""


def start_processes() -> None:
    """Starts jax.distributed from the flags (nothing without them); on process > 0,
    robustjax logs only warnings and errors."""
    from experiments.log_setup import setup_logging
    from robustjax.runtime import mesh

    f = flags.FLAGS
    if f.distributed or f.coordinator_address:
        setup_logging()  # before jax.distributed logs its start-up
    try:
        started = mesh.initialize(distributed=f.distributed,
                                  coordinator_address=f.coordinator_address,
                                  num_processes=f.num_processes, process_id=f.process_id,
                                  heartbeat_timeout_s=f.heartbeat_timeout)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    except Exception as e:  # XLA's runtime errors: connection refused, timeouts
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise DistributedStartError(f"jax.distributed could not start: "
                                    f"{(str(e).strip().splitlines() or [type(e).__name__])[0]}"
                                    ) from e
    if started and not mesh.is_primary():
        logging.getLogger("robustjax").setLevel(logging.WARNING)


def one_line_errors(main):
    """Wraps an absl ``main(argv)`` with the conventions above."""
    from robustjax.training import Preempted
    from robustjax.training.workdir import WorkdirInUseError

    @functools.wraps(main)
    def wrapped(argv):
        try:
            start_processes()
            return main(argv)
        except app.UsageError:
            raise
        except (ValueError, FileNotFoundError, WorkdirInUseError, Preempted,
                DistributedStartError) as e:
            if flags.FLAGS.verbose or os.environ.get("ROBUSTJAX_TRACEBACK") == "1":
                raise
            print(f"{'preempted' if isinstance(e, Preempted) else 'error'}: {e}",
                  file=sys.stderr)
            sys.exit(PREEMPTED_EXIT if isinstance(e, Preempted) else 1)
        except jax.errors.JaxRuntimeError as e:
            if jax.process_count() == 1 or flags.FLAGS.verbose:
                raise
            # A collective failed: another process died or cannot be reached. Exit now;
            # a normal exit would wait in jax.distributed's shutdown barrier for the
            # dead process until the heartbeat timeout, then abort.
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            print(f"error: process {jax.process_index()}: a collective with the other "
                  f"processes failed; another process probably died (see its log): {first}",
                  file=sys.stderr)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
    return wrapped
