"""Training, saving, loading and predicting with the two baselines, through the
shared loop (:mod:`xrecon.train.loop`) on the same datasets as SCR (only
``image``, ``K`` and ``world_to_cam`` of each sample are used).

Model files are self-contained ``.pt`` dicts tagged ``format`` =
``"xrecon-posenet"`` or ``"xrecon-landmarks"`` with the network's constructor
arguments, its weights and the training detector; a ``.json`` sidecar repeats
everything but the weights.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from xrecon.errors import InputError
from xrecon.geometry import Camera
from xrecon.io import atomic_path, atomic_write_text, json_ready, load_torch_file
from xrecon.methods.baselines.landmarks import (
    LandmarkHeatmapNet, decode_heatmaps, heatmap_loss, heatmap_targets, project_landmarks)
from xrecon.methods.baselines.posenet import PoseNet, geometric_loss

FORMATS = {"posenet": "xrecon-posenet", "landmarks": "xrecon-landmarks"}
MTRE_CLIP_MM = 50.0
GFR_THRESHOLD_MM = 10.0


@dataclass(frozen=True)
class LandmarkPnPConfig:
    """PnP settings of the landmark baseline.

    Attributes:
        min_peak: a heatmap peak (sigmoid) at least this counts as a detection.
        reproj_threshold_px: RANSAC threshold (network resolution).
        max_iterations: RANSAC iterations.
        pnp_method: ``"poselib"`` or ``"opencv"``.
    """

    min_peak: float = 0.5
    reproj_threshold_px: float = 3.0
    max_iterations: int = 1000
    pnp_method: str = "poselib"


# ---------------------------------------------------------------------- losses and metrics
def posenet_loss_fn(points_world: np.ndarray, scale_mm: float):
    """``loss_fn(model, batch)``: the geometric loss (mean point distance / scale)."""
    pts = torch.as_tensor(np.asarray(points_world), dtype=torch.float32)

    def loss_fn(model, batch):
        est = model(batch["image"])
        loss = geometric_loss(est, batch["world_to_cam"].to(est.dtype), pts.to(est.device), scale_mm)
        return loss.mean(), {"point_error_mm": loss.mean().detach() * scale_mm}

    return loss_fn


def _clipped(err: torch.Tensor) -> dict[str, torch.Tensor]:
    err = torch.where(torch.isfinite(err), err, torch.full_like(err, np.inf))
    return {"mtre_clipped_mm": err.clamp(max=MTRE_CLIP_MM), "gfr10": (err > GFR_THRESHOLD_MM).double()}


def posenet_metrics_fn(targets_world: np.ndarray):
    from xrecon.metrics.registration import mtre_mm

    targets = torch.as_tensor(np.asarray(targets_world), dtype=torch.float64)

    def metrics_fn(model, batch):
        est = model(batch["image"]).detach().cpu().double()
        return _clipped(mtre_mm(est, batch["world_to_cam"].detach().cpu().double(), targets))

    return metrics_fn


def landmark_loss_fn(landmarks_world: np.ndarray, sigma_px: float):
    """``loss_fn(model, batch)``: weighted BCE against Gaussians at the true projections."""
    lm = torch.as_tensor(np.asarray(landmarks_world), dtype=torch.float64)

    def loss_fn(model, batch):
        logits = model(batch["image"])
        h, w = logits.shape[-2:]
        uv, _ = project_landmarks(lm.to(logits.device), batch["K"], batch["world_to_cam"])
        targets, inside = heatmap_targets(uv.to(logits.dtype), h, w, sigma_px)
        loss = heatmap_loss(logits, targets)
        return loss.mean(), {"visible_landmarks": inside.float().sum(-1).mean()}

    return loss_fn


def landmark_metrics_fn(landmarks_world: np.ndarray, targets_world: np.ndarray, height: int, width: int,
                        config: LandmarkPnPConfig):
    from xrecon.metrics.registration import mtre_mm

    targets = torch.as_tensor(np.asarray(targets_world), dtype=torch.float64)

    def metrics_fn(model, batch):
        logits = model(batch["image"])
        K = batch["K"].detach().cpu().double()
        est = [landmark_pose(logits[i:i + 1], landmarks_world, Camera(K[i], torch.eye(4), height, width),
                             config).world_to_cam for i in range(K.shape[0])]
        return _clipped(mtre_mm(torch.as_tensor(np.stack(est)), batch["world_to_cam"].detach().cpu().double(),
                                targets))

    return metrics_fn


def landmark_pose(logits: torch.Tensor, landmarks_world: np.ndarray, camera: Camera, config: LandmarkPnPConfig):
    """PnP on the detected peaks of one image's heatmap logits ``(1, L, H, W)``
    -> :class:`~xrecon.solve.pnp.PnPResult` (``success=False`` with a reason
    when fewer than 4 landmarks are detected)."""
    from xrecon.solve.pnp import PnPConfig, solve_pnp

    uv, peak, det = decode_heatmaps(logits.detach().cpu(), config.min_peak)
    keep = det[0].numpy()
    cfg = PnPConfig(method=config.pnp_method, reproj_threshold_px=config.reproj_threshold_px,
                    max_iterations=config.max_iterations, max_points=None, min_inliers=4, min_inlier_ratio=0.5)
    lm = np.asarray(landmarks_world, dtype=np.float64)
    return solve_pnp(lm[keep], uv[0].double().numpy()[keep], camera, config=cfg,
                     weights=peak[0].double().numpy()[keep])


# ---------------------------------------------------------------------- model files
def save_baseline(path: str | Path, kind: str, model: torch.nn.Module, init_args: dict[str, Any], camera: Camera,
                  extra: dict[str, Any] | None = None) -> None:
    """Write a baseline model (``kind`` in ``posenet`` / ``landmarks``) and its JSON sidecar."""
    path = Path(path)
    meta = {"format": FORMATS[kind], "format_version": 1, "init_args": json_ready(init_args),
            "camera": camera.to_dict(), **json_ready(extra or {})}
    with atomic_path(path) as tmp:
        torch.save({**meta, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, tmp)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))


def load_baseline(path: str | Path, kind: str) -> tuple[torch.nn.Module, dict]:
    """Read a model written by :func:`save_baseline` -> ``(model in eval mode, metadata)``."""
    path = Path(path)
    payload = load_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMATS[kind]:
        raise InputError(f"not a {kind} baseline model (format tag {FORMATS[kind]!r} missing)", path)
    args = dict(payload["init_args"])
    if kind == "posenet":
        model = PoseNet(np.asarray(args.pop("points_world")), np.asarray(args.pop("ref_world_to_cam")),
                        np.asarray(args.pop("t_scale_mm")), **args)
    else:
        model = LandmarkHeatmapNet(np.asarray(args.pop("landmarks_world")), args.pop("landmark_names"), **args)
    model.load_state_dict(payload["state_dict"])
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    meta["camera"] = Camera.from_dict(payload["camera"], path)
    return model.eval(), meta


# ---------------------------------------------------------------------- training entry points
def train_baseline(
    kind: str,
    train_set: Dataset,
    val_set: Dataset | None,
    *,
    init_args: dict[str, Any],
    camera: Camera,
    targets_world: np.ndarray,
    train_config,
    model_path: str | Path | None = None,
    val_max_images: int = 128,
    pnp: LandmarkPnPConfig = LandmarkPnPConfig(),
    run_info: dict | None = None,
):
    """Train a baseline (``"posenet"`` or ``"landmarks"``) with the shared loop
    and write its model file (best validation epoch). ``init_args`` are the
    network's constructor arguments (``PoseNet`` / ``LandmarkHeatmapNet``).
    Returns ``(model_path, TrainResult)``."""
    from xrecon.methods.scr.data import first_items
    from xrecon.train.loop import train

    if kind == "posenet":
        model = PoseNet(**init_args)
        loss_fn = posenet_loss_fn(init_args["points_world"], float(model.scale_mm))
        metrics_fn = posenet_metrics_fn(targets_world)
    elif kind == "landmarks":
        model = LandmarkHeatmapNet(**init_args)
        loss_fn = landmark_loss_fn(init_args["landmarks_world"], model.sigma_px)
        metrics_fn = landmark_metrics_fn(init_args["landmarks_world"], targets_world, camera.height, camera.width,
                                         pnp)
    else:
        raise InputError(f"unknown baseline {kind!r}; choose 'posenet' or 'landmarks'")
    if val_set is not None and train_config.monitor == "loss":
        train_config = dataclasses.replace(train_config, monitor="mtre_clipped_mm", monitor_mode="min")
    val = first_items(val_set, val_max_images) if val_set is not None else None
    result = train(model, loss_fn, train_set, val, train_config, metrics_fn if val is not None else None,
                   run_info={"method": kind, **(run_info or {})})
    # The model file holds the final weights (the cosine schedule ends at a small
    # learning rate); checkpoints/best.pt keeps the best validation epoch.
    model_path = Path(model_path) if model_path else Path(train_config.out_dir) / f"{kind}.pt"
    if int(os.environ.get("RANK", "0")) == 0:
        extra = {"training": {"epochs_run": len(result.history), "best_monitor": result.best_value,
                              **(run_info or {})}}
        if kind == "landmarks":
            extra["pnp"] = dataclasses.asdict(pnp)
        save_baseline(model_path, kind, model.cpu(), init_args, camera, extra)
    return model_path, result
