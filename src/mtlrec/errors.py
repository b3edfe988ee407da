"""The one exception type for user mistakes.

A ``UserError`` is raised for anything the user can fix (a config key, a schema field, a data file, a column, a
missing run folder): its message is one line that names the file, column or key and what was expected. The CLI
prints it as ``error: <message>`` and exits with status 2; ``--debug`` shows the traceback instead. Everything else
is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
