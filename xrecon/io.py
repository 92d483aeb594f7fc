"""Atomic file output: write to a temporary file in the same folder, then rename,
so an interrupted or failed run never leaves a partial file behind."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from xrecon.errors import InputError

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    The temporary name keeps the final suffix so libraries that infer the format
    from the extension (open3d, nibabel, PIL) still work.
    """
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or "".join(path.suffixes), dir=parent)
        os.close(fd)
    except OSError as exc:
        raise InputError(f"cannot write here ({exc.strerror or exc})", parent) from exc
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes 0600 files: give the result the usual umask permissions
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_ready(x):
    """``x`` with numpy / torch values as plain numbers and lists, tuples as lists,
    paths as strings, and NaN / inf as ``None`` (bare ``NaN`` is not JSON)."""
    import math

    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "tolist"):  # numpy arrays and scalars, torch tensors
        return json_ready(x.tolist())
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def atomic_write_json(path: str | Path, obj, *, indent: int = 2) -> None:
    """Write ``json_ready(obj)`` as strict JSON, atomically."""
    import json

    atomic_write_text(path, json.dumps(json_ready(obj), indent=indent, allow_nan=False) + "\n")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


#: What a model or checkpoint file may hold (docs/hardening.md): tensors, numbers,
#: strings, None, and lists / tuples / dicts of them. Anything else (a class, a
#: function, a numpy array) is refused before it is built, so a crafted file
#: cannot run code.
MODEL_FILE_CONTENTS = "tensors, numbers, strings, None, and lists / tuples / dicts of them"


def load_torch_file(path: str | Path, *, map_location="cpu", what: str = "model file"):
    """Read a ``.pt`` file without running any code it may carry.

    ``torch.load(..., weights_only=True)``: the unpickler builds only
    :data:`MODEL_FILE_CONTENTS` and refuses every other global before calling it.

    Raises:
        InputError: missing or unreadable file, or one holding anything else
            (the message names the refused object).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no such {what}", path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), None)
        if refused is None:  # not a pickle, or a damaged one
            raise InputError(f"cannot read the {what} (not a PyTorch file, or a damaged one)", path) from None
        raise InputError(f"refused: the {what} holds more than weights and plain data ({refused}); "
                         f"xrecon reads only {MODEL_FILE_CONTENTS}", path) from None
    except Exception as exc:  # torch raises many types for a truncated or foreign file
        raise InputError(f"cannot read the {what} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})",
                         path) from None
