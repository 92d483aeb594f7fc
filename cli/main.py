"""The ``xrecon`` command. Each sub-command lives in its own module and imports
its heavy dependencies inside the command, so ``xrecon --help`` is instant."""
from __future__ import annotations

import importlib
import logging
import sys

import typer

app = typer.Typer(
    name="xrecon",
    help="Bone shape and pose from a single X-ray; CT-to-X-ray registration.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: option names are never cut, whatever the terminal width
)

# (module in xrecon.cli, attribute, name). A module exposing a Typer app is added
# as a group; one exposing a function is added as a single command.
_COMMANDS = [
    ("simulate", "simulate", "simulate"),
    ("reconstruct", "reconstruct", "reconstruct"),
    ("register", "register", "register"),
    ("evaluate", "evaluate", "evaluate"),
    ("train", "app", "train"),
    ("ssm", "app", "ssm"),
    ("demo", "demo", "demo"),
]


@app.callback()
def _root() -> None:
    """Bone shape and pose from a single X-ray; CT-to-X-ray registration.

    Frames: world = the CT's own patient frame, RAS+ mm; poses are OpenCV
    world-to-camera 4x4 matrices (see docs/conventions.md).
    """


@app.command()
def version() -> None:
    """Print the versions of xrecon and of the libraries whose behaviour it pins."""
    from importlib.metadata import PackageNotFoundError, version as v

    for pkg in ["xrecon", "torch", "diffdrr", "open3d-cpu", "poselib", "opencv-python-headless", "kornia"]:
        try:
            typer.echo(f"{pkg} {v(pkg)}")
        except PackageNotFoundError:
            typer.echo(f"{pkg} (not installed)")


for _mod, _attr, _name in _COMMANDS:
    try:
        _m = importlib.import_module(f"xrecon.cli.{_mod}")
    except ModuleNotFoundError as _exc:  # command not built yet in this checkout
        if _exc.name != f"xrecon.cli.{_mod}":
            raise
        continue
    _obj = getattr(_m, _attr)
    if isinstance(_obj, typer.Typer):
        app.add_typer(_obj, name=_name)
    else:
        app.command(name=_name)(_obj)


def run(argv: list[str] | None = None) -> None:
    """Entry point: xrecon's own errors and bad command lines (an unknown option, a
    value out of range) become one line ``xrecon: error: ...`` and exit code 2."""
    # typer vendors click (typer._click) from 0.20 on; the exceptions are click's own
    from typer import Abort
    from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError

    from xrecon.errors import XreconError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        rv = app(args=argv, prog_name="xrecon", standalone_mode=False)
    except XreconError as exc:
        typer.echo(f"xrecon: error: {exc}", err=True)
        sys.exit(2)
    except NoArgsIsHelpError as exc:  # `xrecon` or `xrecon ssm` alone: the help
        typer.echo(exc.format_message())
        sys.exit(0)
    except UsageError as exc:
        hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
        typer.echo(f"xrecon: error: {exc.format_message()}{hint}", err=True)
        sys.exit(2)
    except ClickException as exc:
        typer.echo(f"xrecon: error: {exc.format_message()}", err=True)
        sys.exit(exc.exit_code)
    except Abort:
        typer.echo("xrecon: aborted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    run()
