"""Command-line conventions of the entry points: errors as one line and a non-zero exit.

* Configuration and data errors (``ValueError``, which includes
  ``robustjax.data.DataError``, an invalid adversarial example, a diverged
  run and unreadable checkpoints; ``FileNotFoundError``; a workdir in use by
  another process): ``error: <message>`` on stderr and exit status 1.
* Preemption (SIGTERM during training, after the checkpoint is saved): one
  line and exit status 143 (128 + SIGTERM), so a scheduler or script sees
  that the run is not finished; rerunning resumes.
* Usage errors (``app.UsageError``, flag validators): absl's usual message and
  status.

``--verbose`` (or ``ROBUSTJAX_TRACEBACK=1``) re-raises, with the traceback.
"""

from __future__ import annotations

import functools
import os
import sys

from absl import app, flags

flags.DEFINE_bool("verbose", False, "On an error, show the Python traceback, not one line.")

PREEMPTED_EXIT = 143


def one_line_errors(main):
    """Wraps an absl ``main(argv)`` with the conventions above."""
    from robustjax.train import Preempted
    from robustjax.workdir import WorkdirInUseError

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except app.UsageError:
            raise
        except (ValueError, FileNotFoundError, WorkdirInUseError, Preempted) as e:
            if flags.FLAGS.verbose or os.environ.get("ROBUSTJAX_TRACEBACK") == "1":
                raise
            print(f"{'preempted' if isinstance(e, Preempted) else 'error'}: {e}",
                  file=sys.stderr)
            sys.exit(PREEMPTED_EXIT if isinstance(e, Preempted) else 1)
    return wrapped
