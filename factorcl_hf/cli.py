"""How the console scripts end on an error: one line, not a traceback.

The package raises ``ValueError`` (or ``FileNotFoundError``) on purpose for a bad option,
file, column, row or model folder, with a message naming it; the scripts print that message
as one line and exit 2 (a usage error, as ``argparse`` does). ``OSError`` (a disk that
fills up) and ``RuntimeError`` subclasses the package defines (a run that diverged, a Hub
that refused) exit 1, also in one line. Anything else is a bug and keeps its traceback.
``--debug`` or ``FACTORCL_DEBUG=1`` shows the traceback of every error (``FACTORCL_DEBUG=1``
also turns on the model's checks of input values, ``integrity.value_checks_enabled``).

Standard library only: the scripts import it before their heavy imports.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["PackageRuntimeError", "UsageOutcome", "console_main", "debug_requested", "usage_errors"]


class PackageRuntimeError(RuntimeError):
    """A run-time failure the package diagnoses itself (its message says what happened)."""


@dataclass
class UsageOutcome:
    """The exit status :func:`usage_errors` settled on (0 when nothing was raised)."""

    status: int = 0


def debug_requested(argv=None) -> bool:
    """``--debug`` among ``argv`` (default ``sys.argv``) or ``FACTORCL_DEBUG`` set to anything but 0."""
    argv = sys.argv[1:] if argv is None else argv
    return "--debug" in argv or os.environ.get("FACTORCL_DEBUG", "0") not in ("", "0")


@contextmanager
def usage_errors(prog: str, debug: bool = False):
    """Turn the package's deliberate errors raised inside the block into one line on stderr
    and an exit status in the yielded :class:`UsageOutcome` (2: usage, 1: run-time)."""
    outcome = UsageOutcome()
    debug = debug or debug_requested([])
    try:
        yield outcome
    except (ValueError, FileNotFoundError) as error:
        if debug:
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        outcome.status = 2
    except (OSError, PackageRuntimeError) as error:
        if debug:
            raise
        print(f"{prog}: error: {error}", file=sys.stderr)
        outcome.status = 1


def console_main(prog: str, run, argv=None) -> int:
    """A console script's ``main``: ``run(argv)`` (default ``sys.argv[1:]``) inside
    :func:`usage_errors`; its exit status (0 when nothing was raised)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    with usage_errors(prog, debug="--debug" in argv) as outcome:
        run(argv)
    return outcome.status
