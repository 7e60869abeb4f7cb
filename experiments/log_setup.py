"""Logging of the entry points: progress lines on stdout, library chatter muted."""

import logging
import sys

from absl import logging as absl_logging


def setup_logging() -> None:
    """Progress lines from robustjax at INFO; library chatter (orbax) at WARNING."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    log = logging.getLogger("robustjax")
    if log.level == logging.NOTSET or log.level < logging.WARNING:
        log.setLevel(logging.INFO)  # process > 0 of a multi-process run keeps WARNING
    if not log.handlers:
        h = logging.StreamHandler(sys.stdout)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
        log.addHandler(h)
    log.propagate = False
