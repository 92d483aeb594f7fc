"""The RayEmb model file: network weights + what is needed to use them.

``<name>.pt`` holds ``{"format": FORMAT, "net_config": ..., "state_dict": ...,
"info": {...}}`` (tensors and plain data only; read with weights-only
unpickling, :func:`xrecon.io.load_torch_file`, so a tampered file is refused
before any of its code runs); ``<name>.json`` is a readable sidecar with the
command that trained it, the data and the training figures.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from xrecon.errors import InputError
from xrecon.io import atomic_path, atomic_write_text, load_torch_file
from xrecon.methods.rayemb.network import RayEmbNet, RayEmbNetConfig

FORMAT = "xrecon-rayemb-model-v1"

#: The shipped weights (trained on CPU at 128 px; docs/rayemb.md), when present.
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "weights" / "rayemb_default.pt"


def save_rayemb_model(path: str | Path, net: RayEmbNet, info: dict[str, Any] | None = None) -> None:
    """Write ``path`` (.pt) and its JSON sidecar atomically."""
    path = Path(path)
    state = {"format": FORMAT, "net_config": net.config.to_dict(),
             "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
             "info": json.loads(json.dumps(dict(info or {}), default=str))}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    sidecar = {"format": FORMAT, "weights": path.name, "net_config": net.config.to_dict(), **state["info"]}
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2, default=str))


def load_rayemb_model(path: str | Path | None = None, device: str | torch.device = "cpu") -> tuple[RayEmbNet, dict]:
    """Load a model file (default: the shipped weights) -> ``(net (eval mode), info)``.

    Raises:
        InputError: missing file, a file holding anything beyond tensors and plain
            data (refused unread), another format, or weights that do not fit.
    """
    path = Path(path) if path is not None else DEFAULT_MODEL
    if not path.is_file():
        raise InputError("no RayEmb model here (train one with `xrecon train rayemb`)", path)
    state = load_torch_file(path, map_location=device)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"not an xrecon RayEmb model (expected format {FORMAT!r})", path)
    net = RayEmbNet(RayEmbNetConfig.from_dict(state["net_config"]))
    try:
        net.load_state_dict(state["state_dict"])
    except RuntimeError as exc:
        raise InputError(f"the weights do not fit the network they name ({str(exc).splitlines()[0]})", path) from None
    net.to(device).eval()
    return net, dict(state.get("info", {}))
