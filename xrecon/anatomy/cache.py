"""On-disk cache of expensive derived data (bone meshes, ...), keyed by a hash
of the inputs' content, never by a file path.

The cache lives in ``$XRECON_CACHE_DIR`` or, unset, ``~/.cache/xrecon``. Set
``XRECON_CACHE_DIR=off`` (or ``0`` / ``none``) to disable it. Entries are
``.npz`` files written atomically; a corrupt or unreadable entry is recomputed.
Deleting the folder is always safe.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: Bump when the layout of cached products changes, to orphan old entries.
CACHE_VERSION = 1
_OFF = {"off", "0", "none", "false", ""}


def cache_dir() -> Path | None:
    """The cache folder, or ``None`` when caching is switched off."""
    env = os.environ.get("XRECON_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in _OFF else Path(env).expanduser()
    return Path.home() / ".cache" / "xrecon"


def hash_inputs(*parts) -> str:
    """A hex digest of ``parts``: arrays by dtype, shape and bytes; everything else
    (numbers, strings, None, lists, dicts) by its canonical JSON text."""
    h = hashlib.sha256(f"xrecon-cache-v{CACHE_VERSION}".encode())
    for part in parts:
        if isinstance(part, np.ndarray):
            a = np.ascontiguousarray(part)
            h.update(f"ndarray:{a.dtype.str}:{a.shape}".encode())
            h.update(memoryview(a.reshape(-1).view(np.uint8)))
        else:
            h.update(b"json:" + json.dumps(part, sort_keys=True, default=_jsonable).encode())
        h.update(b"|")
    return h.hexdigest()[:32]


def cached_arrays(kind: str, key: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Return the arrays stored under ``kind/key``, or ``compute()`` them and store them.

    Args:
        kind: a folder name for one kind of product (e.g. ``"bone_mesh"``).
        key: a digest from :func:`hash_inputs` of everything the product depends on.
        compute: builds ``{name: array}`` (plain numeric / string arrays, no objects).
    """
    folder = cache_dir()
    if folder is None:
        return compute()
    path = folder / kind / f"{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except Exception as exc:  # a corrupt entry is not an error: rebuild it
            log.warning("ignoring unreadable cache entry %s (%s)", path, exc)
    arrays = compute()
    try:
        from xrecon.io import atomic_path

        with atomic_path(path, suffix=".npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
    except Exception as exc:  # a read-only cache folder must not break the computation
        log.warning("cannot write cache entry %s (%s)", path, exc)
    return arrays


def _jsonable(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, (np.ndarray, tuple, set)):
        return list(np.asarray(list(x) if isinstance(x, set) else x).tolist())
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot hash {type(x).__name__}")
