"""One vocabulary of typed errors.

Library code raises these (never ``assert`` on user input); the CLI turns them
into a one-line message and a non-zero exit code.
"""
from __future__ import annotations

from pathlib import Path


class XreconError(Exception):
    """Base class of every error xrecon raises on purpose."""


class InputError(XreconError, ValueError):
    """Bad user input: a file that cannot be read or holds the wrong thing.

    The message always names the file (when there is one) and the problem.
    """

    def __init__(self, problem: str, path: str | Path | None = None):
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class ShapeError(XreconError, ValueError):
    """An array argument has the wrong shape; the message shows expected and actual."""

    def __init__(self, name: str, expected: str, actual: tuple):
        super().__init__(f"{name}: expected shape {expected}, got {tuple(actual)}")


class NotFittedError(XreconError, RuntimeError):
    """An estimator was used before ``fit``."""


def check_shape(name: str, x, expected: tuple) -> None:
    """Raise :class:`ShapeError` unless ``x.shape`` matches ``expected``.

    ``expected`` holds ints or ``None`` (any size); a leading ``...`` allows any
    number of batch dimensions.
    """
    shape = tuple(x.shape)
    exp = tuple(expected)
    if exp and exp[0] is Ellipsis:
        exp = exp[1:]
        shape_tail = shape[len(shape) - len(exp):] if len(shape) >= len(exp) else None
        ok = shape_tail is not None and all(e is None or e == s for e, s in zip(exp, shape_tail))
        text = "(..., " + ", ".join("*" if e is None else str(e) for e in exp) + ")"
    else:
        ok = len(shape) == len(exp) and all(e is None or e == s for e, s in zip(exp, shape))
        text = "(" + ", ".join("*" if e is None else str(e) for e in exp) + ")"
    if not ok:
        raise ShapeError(name, text, shape)
