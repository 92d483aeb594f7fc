"""Helpers shared by the commands: error reporting, progress, output folders."""
from __future__ import annotations

import functools
import os
from pathlib import Path

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


def check_output_folder(out: Path) -> None:
    """Fail at once (before any file is read or anything computed) when the output
    folder ``out`` is a file or cannot be created or written. Creates nothing."""
    from xrecon.errors import InputError

    probe = Path(out)
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and (not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK)):
        what = "is a file, not a folder" if not probe.is_dir() else "is not writable"
        if probe != Path(out):
            what += f" (the output folder {out} would be made in it)"
        raise InputError(f"output: {what}", probe)


def check_inputs_exist(*paths) -> None:
    """Fail at once when a named input file or folder does not exist (``None``: not given),
    before anything heavy is imported or read."""
    from xrecon.errors import InputError

    for path in paths:
        if path is not None and not Path(path).exists():
            raise InputError("no such file or folder", path)
