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


def run() -> None:
    """Entry point that turns xrecon's own errors into one line and exit code 2."""
    from xrecon.errors import XreconError

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app()
    except XreconError as exc:
        typer.echo(f"xrecon: error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
