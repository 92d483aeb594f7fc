"""Saving and loading a trained patient-specific SCR model.

One ``.pt`` file holds everything inference needs, so ``register_scr`` takes a
single path:

- ``format`` / ``format_version``: ``"xrecon-scr"`` / 1 (checked on load);
- ``network``: U-Net size (``base_channels``, ``levels``, ``input_stride``,
  ``fine_channels``: 0 or absent = no full-resolution branch);
- ``state_dict``: weights, including the coordinate normaliser buffers;
- ``camera``: the training detector at the network's resolution
  (:meth:`xrecon.geometry.Camera.to_dict`; its pose is irrelevant);
- ``ct``: the CT the model was trained on (path, SHA-256 of its voxels and
  affine), and the bone structures; scene coordinates and poses are in that
  CT's world frame (RAS+ mm);
- ``targets_world``, ``target_names``: the points used for mTRE;
- ``inference``: default PnP settings chosen on validation data;
- ``training``: provenance (command, dataset, epochs, validation figures).

A JSON sidecar (same stem, ``.json``) repeats everything except the weights,
for humans and for the README.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from xrecon.errors import InputError
from xrecon.geometry import Camera
from xrecon.io import atomic_path, atomic_write_text, load_torch_file
from xrecon.methods.scr.network import CoordinateNormalizer, SceneCoordinateNet

FORMAT = "xrecon-scr"
FORMAT_VERSION = 1


@dataclass
class SCRModelInfo:
    """Everything about a saved model except its weights.

    Attributes:
        network: ``{"base_channels": int, "levels": int, "input_stride": int, "fine_channels": int}``.
        camera: the training detector (``Camera``, one view, network resolution).
        ct: ``{"path": str, "sha256": str, "structures": [names]}``.
        targets_world: ``(T, 3)`` mTRE targets (world mm).
        target_names: ``T`` names.
        inference: default inference settings (see :class:`~xrecon.methods.scr.predict.SCRInferenceConfig`).
        training: provenance.
    """

    network: dict
    camera: Camera
    ct: dict = field(default_factory=dict)
    targets_world: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))
    target_names: list[str] = field(default_factory=list)
    inference: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "frame": "world = the training CT's own frame, RAS+ mm; poses are OpenCV world_to_cam",
            "network": dict(self.network),
            "camera": self.camera.to_dict(),
            "ct": dict(self.ct),
            "targets_world": np.asarray(self.targets_world, dtype=float).tolist(),
            "target_names": list(self.target_names),
            "inference": dict(self.inference),
            "training": dict(self.training),
        }


def save_scr_model(path: str | Path, model: SceneCoordinateNet, info: SCRModelInfo) -> None:
    """Write ``model`` and ``info`` to ``path`` (``.pt``) and its ``.json`` sidecar, atomically."""
    path = Path(path)
    payload = info.to_dict()
    payload["state_dict"] = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    side = info.to_dict()
    side["normalizer"] = {"centre_mm": list(model.normalizer.centre_mm), "scale_mm": model.normalizer.scale_mm}
    atomic_write_text(path.with_suffix(".json"), json.dumps(side, indent=2))


def load_scr_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[SceneCoordinateNet, SCRModelInfo]:
    """Read a model written by :func:`save_scr_model`.

    Raises:
        InputError: unreadable file, not an SCR model, another format version,
            or weights that do not fit the described network.
    """
    path = Path(path)
    payload = load_torch_file(path, map_location=device)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise InputError(f"not a patient-specific SCR model (no '{FORMAT}' format tag); "
                         "train one with `xrecon train scr`", path)
    if payload.get("format_version") != FORMAT_VERSION:
        raise InputError(f"SCR model format version {payload.get('format_version')} is not supported "
                         f"(this xrecon reads version {FORMAT_VERSION})", path)
    try:
        net_cfg = payload["network"]
        state = payload["state_dict"]
        normalizer = CoordinateNormalizer(tuple(float(c) for c in state["centre_mm"]), float(state["scale_mm"]))
        model = SceneCoordinateNet(normalizer, int(net_cfg["base_channels"]), int(net_cfg["levels"]),
                                   int(net_cfg.get("input_stride", 1)), int(net_cfg.get("fine_channels", 0)))
        model.load_state_dict(state)
        camera = Camera.from_dict(payload["camera"], path)
    except (KeyError, TypeError, RuntimeError) as exc:
        raise InputError(f"SCR model file is incomplete or inconsistent ({exc.__class__.__name__}: {exc})",
                         path) from exc
    model.to(device).eval()
    info = SCRModelInfo(
        network=dict(net_cfg),
        camera=camera,
        ct=dict(payload.get("ct", {})),
        targets_world=np.asarray(payload.get("targets_world", []), dtype=np.float64).reshape(-1, 3),
        target_names=list(payload.get("target_names", [])),
        inference=dict(payload.get("inference", {})),
        training=dict(payload.get("training", {})),
    )
    return model, info
