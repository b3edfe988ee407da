"""The one exception type for user mistakes.

A ``UserError`` is raised for anything the user can fix (a config key, a schema field, a data file, a column, a
missing run folder): its message is one line that names the file, column or key and what was expected. The CLI
prints it as ``error: <message>`` and exits with status 2; ``--debug`` shows the traceback instead. Everything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import os
import sys
import traceback
from collections.abc import Callable, Iterable
from typing import TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake in the user's input; the message is shown alone, on one line."""

    exit_code = 2


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the nearest allowed name, or ``""``."""
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_name(what: str, value: str, allowed: Iterable[str], where: str = "") -> UserError:
    """``UserError`` for a name that is not one of ``allowed``, suggesting the nearest one."""
    allowed = sorted({str(a) for a in allowed})
    prefix = f"{where}: " if where else ""
    shown = ", ".join(allowed) if len(allowed) <= 40 else ", ".join(allowed[:40]) + ", …"
    return UserError(f"{prefix}unknown {what} {value!r}{did_you_mean(value, allowed)}; expected one of: {shown}")


class SettingsError(UserError):
    """Settings that no run of the experiment can train with (a device, precision or sharding combination that
    the installed engines refuse): it ends the experiment at once instead of being recorded as one failed run."""


class NonFiniteLoss(UserError):
    """Training produced a NaN/inf loss; the message names the likely cause (an input column, the lr)."""


class RunInterrupted(Exception):
    """Training was interrupted (Ctrl-C / SIGTERM) after the last checkpoint was written; the message says where
    the run stopped and the command that resumes it. The CLI prints it on one line and exits with status 130."""

    exit_code = 130


def debug_requested() -> bool:
    """``MTLREC_DEBUG`` is set to something other than ``0``: show tracebacks of user mistakes."""
    return os.environ.get("MTLREC_DEBUG", "") not in ("", "0")


def report_user_errors(fn: Callable[[], T], debug: bool = False) -> T:
    """``fn()``; a user mistake (config, schema, data, missing file) ends with one ``error:`` line on stderr and
    exit status 2, an interrupted run with its message and status 130; ``debug`` prints the traceback first.
    The CLI and the benchmark scripts end this way."""
    import yaml

    try:
        return fn()
    except RunInterrupted as e:
        if debug:
            traceback.print_exc()
        print(str(e), file=sys.stderr)
        sys.exit(RunInterrupted.exit_code)
    except (UserError, FileNotFoundError, IsADirectoryError, PermissionError, yaml.YAMLError) as e:
        if debug:
            traceback.print_exc()
        print(f"error: {_one_line(e)}", file=sys.stderr)
        sys.exit(2)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return " ".join(str(e).split()) or type(e).__name__
