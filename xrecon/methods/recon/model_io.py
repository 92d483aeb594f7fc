"""The reconstruction model file: network weights + everything needed to use them.

``<name>.pt`` holds ``{"format": FORMAT, "net_config": ..., "state_dict": ...,
"shape_model": name, "model_to_ras": 4x4, "info": {...}}``; ``<name>.json`` is
a human-readable sidecar (the command that trained it, data, measured
numbers). Loading checks the format tag and that the shape model the network
was trained with is the one installed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xrecon.errors import InputError
from xrecon.io import atomic_path, atomic_write_text, load_torch_file
from xrecon.methods.recon.network import ReconNet, ReconNetConfig
from xrecon.methods.recon.shape import ShapeSpace

FORMAT = "xrecon-recon-model-v1"

#: The shipped default model (trained on CPU at 128 px; see docs/reconstruction.md).
DEFAULT_MODEL = Path(__file__).resolve().parents[2] / "weights" / "recon_default.pt"


def save_recon_model(path: str | Path, net: ReconNet, space: ShapeSpace, shape_model_name: str,
                     info: dict[str, Any] | None = None) -> None:
    """Write ``path`` (.pt) and its JSON sidecar atomically."""
    path = Path(path)
    state = {"format": FORMAT, "net_config": net.config.to_dict(),
             "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()},
             "shape_model": shape_model_name, "shape_model_fingerprint": space.fingerprint,
             "model_to_ras": space.model_to_ras.tolist(),
             "n_modes": space.n_modes, "info": dict(info or {})}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    sidecar = {"format": FORMAT, "weights": path.name, "net_config": net.config.to_dict(),
               "shape_model": shape_model_name, "shape_model_fingerprint": space.fingerprint, **dict(info or {})}
    atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2, default=str))


def load_recon_model(path: str | Path | None = None, device: str | torch.device = "cpu"
                     ) -> tuple[ReconNet, ShapeSpace, dict]:
    """Load a model file (default: the shipped weights) -> ``(net (eval mode), shape space, info)``."""
    path = Path(path) if path is not None else DEFAULT_MODEL
    if not path.is_file():
        raise InputError("no reconstruction model here (train one with `xrecon train recon`)", path)
    state = load_torch_file(path, map_location=device)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise InputError(f"not an xrecon reconstruction model (expected format {FORMAT!r})", path)
    from shape_models.bundled import load_model

    space = ShapeSpace.from_shape_model(load_model(state["shape_model"]), np.asarray(state["model_to_ras"]))
    want = state.get("shape_model_fingerprint")
    if want is not None and want != space.fingerprint:
        raise InputError(f"the network was trained with another version of the shape model {state['shape_model']!r} "
                         f"(fingerprint {want}, installed {space.fingerprint}); retrain it", path)
    if space.n_modes < state["n_modes"]:
        raise InputError(f"the network predicts {state['n_modes']} modes but the installed shape model "
                         f"{state['shape_model']!r} has {space.n_modes}", path)
    net = ReconNet(ReconNetConfig.from_dict(state["net_config"]))
    net.load_state_dict(state["state_dict"])
    net.to(device).eval()
    #: bone-probability threshold calibrated on the validation set (see calibrate_mask_threshold)
    net.mask_threshold = float(state.get("info", {}).get("mask_threshold", 0.5))
    return net, space, dict(state.get("info", {}))
