"""Helpers shared by the commands: error reporting, progress, output folders."""
from __future__ import annotations

import functools
import sys

import typer


def handle_errors(fn):
    """Decorator: an :class:`xrecon.errors.XreconError` (or an OSError on a named file)
    becomes ``xrecon: error: <file>: <problem>`` on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from xrecon.errors import XreconError

        try:
            return fn(*args, **kwargs)
        except XreconError as exc:
            typer.echo(f"xrecon: error: {exc}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:
            where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
            typer.echo(f"xrecon: error: {where}{exc.strerror or exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def positive(value):
    """Typer callback: refuse a number that is not > 0 (``None`` passes: option not given)."""
    if value is not None and not value > 0:
        raise typer.BadParameter(f"must be > 0, got {value}")
    return value
