"""Training a patient-specific SCR model with the shared loop (:mod:`xrecon.train.loop`).

The method supplies the network, the seed-002 loss and a per-epoch validation
metric (PnP on the predicted correspondences, mTRE against the true pose);
the loop supplies seeding, checkpoints that resume, DDP under ``torchrun``,
``config.json``, ``history.json`` and ``curves.png``. At the end the final
weights are written as a self-contained model file
(:mod:`xrecon.methods.scr.model_io`).

Batches are dicts (see :mod:`xrecon.methods.scr.data`):
``image (B, 1, H, W)``, ``entry_world`` / ``exit_world (B, 3, H, W)`` (world
mm, NaN off the bone), ``mask (B, H, W)`` (bool, ray meets bone), ``K (B, 3, 3)``,
``world_to_cam (B, 4, 4)``.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from xrecon.geometry import Camera, se3
from xrecon.methods.scr.loss import scr_loss
from xrecon.methods.scr.data import first_items
from xrecon.sim.augment import ZoomAugment
from xrecon.errors import InputError
from xrecon.methods.scr.model_io import SCRModelInfo, load_scr_model, save_scr_model
from xrecon.methods.scr.network import CoordinateNormalizer, SceneCoordinateNet, coordinates_from_output
from xrecon.methods.scr.predict import SCRInferenceConfig, pose_from_correspondences, scene_correspondences
from xrecon.methods.scr.unet import load_adding_branch
from xrecon.train.losses import scale_error_pct

log = logging.getLogger(__name__)

#: mTRE above this counts as a gross failure (seed 002).
GFR_THRESHOLD_MM = 10.0
#: Failed or wild validation cases are clipped here so the per-epoch mean stays readable.
MTRE_CLIP_MM = 50.0


@dataclass(frozen=True)
class SCRNetConfig:
    """Network and loss settings.

    Attributes:
        base_channels, levels: U-Net size (CPU: 16 / 4; GPU 512 px: 32 / 5).
        input_stride: 2 (CPU: half-resolution inside, dense output) or 1 (the seed's full resolution).
        fine_channels: width of the full-resolution branch (with ``input_stride=2``; 0 = none).
        absent_weight: weight of the ``1 / sigma`` term on pixels without bone.
        beta: beta-NLL exponent of the likelihood term (0 = seed 002's loss;
            see :mod:`xrecon.methods.scr.loss`).
        val_max_images: validation images that get a full PnP per epoch.
        max_zoom: random zoom-in of the training images up to this factor
            (half of them; :class:`xrecon.sim.augment.ZoomAugment`); 1 = off.
        layout_weight: weight of the in-plane scale error of each image's
            predicted scene coordinates, in per cent
            (:func:`xrecon.train.losses.scale_error_pct`): the error PnP turns
            into depth; 0 = off (seed 002's loss).
        along_ray_weight: weight of the coordinate error along each pixel's
            ray in the likelihood (:mod:`xrecon.methods.scr.loss`); PnP sees
            only the part across the ray; 1 = seed 002's loss.
    """

    base_channels: int = 16
    levels: int = 4
    input_stride: int = 2
    fine_channels: int = 0
    absent_weight: float = 1.0
    beta: float = 0.0
    val_max_images: int = 128
    max_zoom: float = 1.0
    layout_weight: float = 0.0
    along_ray_weight: float = 1.0

    def __post_init__(self):
        if not 0.0 <= self.along_ray_weight <= 1.0:
            raise InputError(f"along_ray_weight must be in [0, 1], got {self.along_ray_weight}")
        if self.layout_weight < 0:
            raise InputError(f"layout_weight must be >= 0, got {self.layout_weight}")


def make_loss_fn(normalizer: CoordinateNormalizer, absent_weight: float = 1.0, beta: float = 0.0,
                 layout_weight: float = 0.0, along_ray_weight: float = 1.0):
    """``loss_fn(model, batch) -> (loss, logs)`` for :func:`xrecon.train.loop.train`
    (seed 002's loss, with the along-ray part of the error weighted by
    ``along_ray_weight``, plus ``layout_weight`` x the in-plane scale error in per cent)."""
    centre = torch.tensor(normalizer.centre_mm, dtype=torch.float32)
    scale = float(normalizer.scale_mm)

    def loss_fn(model, batch):
        out = model(batch["image"])
        c = centre.to(out.device)[None, :, None, None]
        entry = (batch["entry_world"].to(out.dtype) - c) / scale
        exit_ = (batch["exit_world"].to(out.dtype) - c) / scale
        source = None
        if along_ray_weight != 1.0:
            # the camera centre in the world frame, normalised like the coordinates
            source = (se3.invert(batch["world_to_cam"])[:, :3, 3].to(out.dtype) - c[:, :, 0, 0]) / scale
        terms = scr_loss(out, entry, exit_, batch["mask"], absent_weight, beta, source, along_ray_weight)
        logs = {"nll": terms["nll"].mean(), "absent": terms["absent"].mean(),
                "coord_error_mm": terms["error_norm"].mean() * scale}
        if "across_error_norm" in terms:  # the part PnP sees
            logs["coord_across_mm"] = terms["across_error_norm"].mean() * scale
        loss = terms["loss"].mean()
        if layout_weight:
            pred = torch.stack([out[:, 0:3], out[:, 4:7]], dim=1)  # (B, 2, 3, H, W)
            layout = scale_error_pct(pred, torch.stack([entry, exit_], dim=1), batch["mask"],
                                     batch["world_to_cam"][:, :3, :3])
            logs["scale_error_pct"] = layout.detach().mean()
            loss = loss + layout_weight * layout.mean()
        return loss, logs

    return loss_fn


def make_metrics_fn(normalizer: CoordinateNormalizer, targets_world: np.ndarray, height: int, width: int,
                    inference: SCRInferenceConfig):
    # PnP uses the intrinsics only (pixel spacing is irrelevant here).
    """Validation metrics per case: PnP on the predicted correspondences, then
    ``mtre_clipped_mm`` (mTRE, failures and wild cases clipped at
    :data:`MTRE_CLIP_MM`), ``gfr10`` (1 when mTRE > 10 mm or PnP failed) and
    ``pnp_success``; the loop averages them over all validation cases."""
    from xrecon.metrics.registration import mtre_mm

    targets = torch.as_tensor(np.asarray(targets_world), dtype=torch.float64)

    def metrics_fn(model, batch):
        coords = coordinates_from_output(model(batch["image"]), normalizer)
        K = batch["K"].detach().cpu().double()
        gt = batch["world_to_cam"].detach().cpu().double()
        est, ok = [], []
        for i in range(K.shape[0]):
            cam = Camera(K[i], gt[i], height, width)
            res = pose_from_correspondences(scene_correspondences(coords, i, inference.use_exit), cam, inference)
            est.append(torch.as_tensor(res.world_to_cam))
            ok.append(res.success)
        err = mtre_mm(torch.stack(est), gt, targets)
        err = torch.where(torch.isfinite(err), err, torch.full_like(err, np.inf))
        return {"mtre_clipped_mm": err.clamp(max=MTRE_CLIP_MM),
                "gfr10": (err > GFR_THRESHOLD_MM).double(),
                "pnp_success": torch.tensor(ok, dtype=torch.float64)}

    return metrics_fn


#: Inference settings tried on the validation set after training (seed 002's
#: log-variance threshold 0.0 and stricter ones, or the per-image choice; the
#: seed's 10 px at 512 px scaled to 128 px, and twice that; without and with
#: the engine's polish on all filtered points).
INFERENCE_CANDIDATES = tuple(
    SCRInferenceConfig(log_var_threshold=t, reproj_threshold_px=r, polish_points=p)
    for t in (0.0, -2.0, -4.0, None) for r in (2.5, 5.0) for p in (0, 5000)
)


@torch.no_grad()
def choose_inference(model: SceneCoordinateNet, dataset: Dataset, targets_world: np.ndarray, height: int, width: int,
                     candidates=INFERENCE_CANDIDATES) -> tuple[SCRInferenceConfig, list[dict]]:
    """Pick the inference settings with the lowest GFR@10 (then median mTRE) on
    ``dataset`` (validation data, never the test set). Returns the choice and
    one record per candidate."""
    from xrecon.metrics.registration import mtre_mm

    model.eval()
    targets = torch.as_tensor(np.asarray(targets_world), dtype=torch.float64)
    preds, cams, gts = [], [], []
    for i in range(len(dataset)):
        s = dataset[i]
        preds.append(model.predict(s["image"][None].to(next(model.parameters()).device)))
        cams.append(Camera(s["K"].double(), torch.eye(4, dtype=torch.float64), height, width))
        gts.append(s["world_to_cam"].double())
    gt = torch.stack(gts)
    records = []
    for cand in candidates:
        est = torch.stack([torch.as_tensor(pose_from_correspondences(
            scene_correspondences(p, 0, cand.use_exit), c, cand).world_to_cam) for p, c in zip(preds, cams)])
        err = mtre_mm(est, gt, targets).numpy()
        err = np.where(np.isfinite(err), err, np.inf)
        records.append({"config": dataclasses.asdict(cand), "gfr10": float(np.mean(err > GFR_THRESHOLD_MM)),
                        "median_mtre_mm": float(np.median(err))})
    best = min(range(len(candidates)), key=lambda k: (records[k]["gfr10"], records[k]["median_mtre_mm"]))
    return candidates[best], records


def train_scr(
    train_set: Dataset,
    val_set: Dataset | None,
    *,
    normalizer: CoordinateNormalizer,
    camera: Camera,
    targets_world: np.ndarray,
    target_names: list[str],
    train_config,
    net_config: SCRNetConfig = SCRNetConfig(),
    inference: SCRInferenceConfig = SCRInferenceConfig(),
    model_path: str | Path | None = None,
    ct_info: dict | None = None,
    run_info: dict[str, Any] | None = None,
    choose_settings: bool = True,
    init: str | Path | None = None,
):
    """Train an SCR network and write the model file.

    Args:
        train_set, val_set: datasets of dict samples (see module docstring).
        normalizer: bone-frame normalisation (from the bone model).
        camera: the training detector at the network resolution (one view).
        targets_world: ``(T, 3)`` mTRE targets (world mm); target_names: their names.
        train_config: :class:`xrecon.train.loop.TrainConfig` (``monitor`` is
            set to the validation ``coord_error_mm``, or ``coord_across_mm``
            when the along-ray error is discounted, when there is a validation
            set and the config monitors the loss).
        net_config: :class:`SCRNetConfig`.
        inference: PnP settings used for validation and stored in the model.
        model_path: where to write the model (default ``out_dir/scr.pt``).
        ct_info: ``{"path", "sha256", "structures"}`` recorded in the model.
        run_info: extra facts for ``config.json`` (command line, dataset).
        choose_settings: after training, pick the inference settings stored in
            the model on the validation set (:func:`choose_inference`);
            otherwise ``inference`` is stored as given.
        init: an SCR model file of the same CT whose weights start the run
            (ignored when resuming). Its U-Net must match ``net_config``; a
            full-resolution branch it lacks is added, starting as a no-op.

    Returns:
        ``(model_path, TrainResult)``.
    """
    from xrecon.train.loop import train

    from xrecon.train import resumed_run_info

    resumed = resumed_run_info(train_config)
    resuming = resumed is not None
    if resumed and resumed.get("net_config"):  # the network the run started with
        net_config = SCRNetConfig(**resumed["net_config"])
    if val_set is not None and train_config.monitor == "loss":
        # continuous, unlike the clipped mTRE which sits at its clip until PnP starts to work;
        # with the along-ray error discounted, the full error may rise while PnP improves
        monitor = "coord_error_mm" if net_config.along_ray_weight == 1.0 else "coord_across_mm"
        train_config = dataclasses.replace(train_config, monitor=monitor, monitor_mode="min")
    model = SceneCoordinateNet(normalizer, net_config.base_channels, net_config.levels, net_config.input_stride,
                               net_config.fine_channels)
    if init is not None and not resuming:
        start, start_info = load_scr_model(init)
        size = {k: int(start_info.network.get(k, 0)) for k in ("base_channels", "levels", "input_stride")}
        if size != {"base_channels": net_config.base_channels, "levels": net_config.levels,
                    "input_stride": net_config.input_stride}:
            raise InputError(f"the initial model's U-Net {size} differs from the one asked for", init)
        if int(start_info.network.get("fine_channels", 0)) not in (0, net_config.fine_channels):
            raise InputError(f"the initial model has a full-resolution branch of width "
                             f"{start_info.network['fine_channels']}; it cannot change to {net_config.fine_channels}",
                             init)
        if not np.allclose([*start.normalizer.centre_mm, start.normalizer.scale_mm],
                           [*normalizer.centre_mm, normalizer.scale_mm], atol=1e-3):
            raise InputError("the initial model was trained on another CT or bone (its coordinate frame differs)",
                             init)
        load_adding_branch(model, start.state_dict(), init)
    val = first_items(val_set, net_config.val_max_images) if val_set is not None else None
    if net_config.max_zoom > 1.0:
        train_set = ZoomAugment(train_set, camera.K[0], net_config.max_zoom)
    info_run = {"method": "scr", "net_config": dataclasses.asdict(net_config),
                "init": None if init is None or resuming else str(init),
                "inference": dataclasses.asdict(inference),
                "normalizer": dataclasses.asdict(normalizer), **(run_info or {})}
    result = train(model, make_loss_fn(normalizer, net_config.absent_weight, net_config.beta,
                                       net_config.layout_weight,
                                       net_config.along_ray_weight), train_set, val, train_config,
                   make_metrics_fn(normalizer, targets_world, camera.height, camera.width, inference)
                   if val is not None else None, run_info=info_run)
    # The model file holds the final weights (the cosine schedule ends at a small
    # learning rate); checkpoints/best.pt keeps the best validation epoch.
    model.cpu().eval()
    model_path = Path(model_path) if model_path else Path(train_config.out_dir) / "scr.pt"
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 writes
        return model_path, result
    calibration = []
    if val is not None and choose_settings:
        inference, calibration = choose_inference(model, val, targets_world, camera.height, camera.width)
        log.info("inference settings chosen on %d validation images: %s", len(val), inference)
    best = result.history[-1] if result.history else {}
    info = SCRModelInfo(
        network=dict(model.config),
        camera=Camera(camera.K[:1], torch.eye(4, dtype=torch.float64), camera.height, camera.width,
                      camera.pixel_spacing_mm),
        ct=dict(ct_info or {}),
        targets_world=np.asarray(targets_world),
        target_names=list(target_names),
        inference=dataclasses.asdict(inference),
        training={"out_dir": str(train_config.out_dir), "epochs_run": len(result.history),
                  "best_monitor": result.best_value, "monitor": train_config.monitor,
                  "last_epoch": best, "inference_calibration": calibration, **(run_info or {})},
    )
    save_scr_model(model_path, model, info)
    return model_path, result
