"""``mtlrec explain`` (the command itself lives with the explain package)."""

from mtlrec.explain.cli import register

__all__ = ["register"]
