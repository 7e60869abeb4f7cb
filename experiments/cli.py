"""Command-line conventions of the entry points: errors as one line and a non-zero exit."""

from __future__ import annotations

import functools
import sys

from absl import app


def one_line_errors(main):
    """Wraps an absl ``main(argv)``: bad input ends the program with one line on stderr, exit 2.

    Configuration and data errors (``ValueError``, which includes an invalid
    adversarial example, ``FileNotFoundError`` and ``app.UsageError``) are the
    user's to fix, so they get ``error: <message>`` rather than a traceback.
    """
    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except (ValueError, FileNotFoundError, app.UsageError) as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    return wrapped
