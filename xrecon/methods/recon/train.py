"""Training entry point of the reconstruction network (through the shared loop).

:func:`train_recon` builds the network for the shape model of the dataset,
trains it with :func:`xrecon.train.train` (seeded, resumable, DDP under
``torchrun``), then writes a self-contained model file
(:func:`~xrecon.methods.recon.model_io.save_recon_model`) from the best
validation checkpoint, with the command that made it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import ConcatDataset

from xrecon.errors import InputError
from xrecon.io import load_torch_file
from xrecon.methods.recon.data import ReconH5Dataset
from xrecon.methods.recon.loss import ReconLoss, ReconLossWeights
from xrecon.methods.recon.model_io import load_recon_model, save_recon_model
from xrecon.methods.recon.network import ReconNet, ReconNetConfig
from xrecon.methods.recon.shape import ShapeSpace
from xrecon.methods.scr.unet import load_adding_branch
from xrecon.train import TrainConfig, load_weights, resumed_run_info, train

log = logging.getLogger(__name__)


def _dataset_facts(path: Path) -> dict:
    try:
        with h5py.File(path, "r") as h5:
            return {"path": str(path), "n_images": int(len(h5["image"])), "config": json.loads(h5.attrs["config"]),
                    "shape_model_fingerprint": h5.attrs.get("shape_model_fingerprint"),
                    "generation_seconds": float(h5.attrs.get("seconds", float("nan")))}
    except (OSError, KeyError) as exc:
        raise InputError(f"not a reconstruction dataset ({exc})", path) from exc


def train_recon(train_h5: str | Path | Sequence[str | Path], val_h5: str | Path, config: TrainConfig, *,
                base_channels: int = 16, levels: int = 4, n_loss_vertices: int = 500, augment=None,
                model_out: str | Path | None = None, command: str | None = None,
                init: str | Path | None = None, fine_channels: int | None = None,
                loss_weights: ReconLossWeights = ReconLossWeights(), max_zoom: float = 1.0) -> Path:
    """Train on ``train_h5`` (validate on ``val_h5``) and write the model file.

    Args:
        train_h5: one file of :func:`~xrecon.methods.recon.data.generate_dataset`,
            or several (parts of the training data, concatenated).
        val_h5: the validation file.
        config: loop settings (:class:`~xrecon.train.TrainConfig`); outputs go to ``config.out_dir``.
        base_channels, levels: U-Net size.
        n_loss_vertices: vertices on which the shape loss measures mm error.
        augment: load-time augmentation ``f(image (1, H, W)) -> image`` (training set only).
        model_out: model file to write (default ``<out_dir>/recon_model.pt``).
        command: the command line to record (default ``sys.argv``).
        init: a model file (:func:`save_recon_model`) whose weights start the
            run (fine-tuning with a fresh optimiser and schedule); ignored when
            the run resumes from its own ``last.pt`` (a resumed run rebuilds the
            network recorded in its ``config.json``). Its network settings win
            over ``base_channels`` / ``levels``.
        fine_channels: width of the full-resolution branch
            (:class:`~xrecon.methods.recon.network.ReconNetConfig`); ``None`` keeps
            the initial model's (0 without ``init``). With ``init``, a branch the
            initial model lacks is added, starting as a no-op.
        loss_weights: weights of the loss terms (:class:`~xrecon.methods.recon.loss.ReconLossWeights`);
            a resumed run keeps the weights recorded in its ``config.json``.
        max_zoom: zoom half of the training images in about the principal
            point by up to this factor (:class:`xrecon.sim.augment.ZoomAugment`;
            the loss then ignores their size label); 1 = off. A resumed run
            keeps the factor recorded in its ``config.json``.

    Returns the model file path (written by rank 0; other ranks return the same path).
    """
    from shape_models.bundled import load_model

    train_files = [Path(train_h5)] if isinstance(train_h5, (str, Path)) else [Path(p) for p in train_h5]
    if not train_files:
        raise InputError("no training data (train*.h5) given")
    val_h5 = Path(val_h5)
    facts = {"train": _dataset_facts(train_files[0]), "val": _dataset_facts(val_h5)}
    if len(train_files) > 1:
        facts["train_parts"] = [_dataset_facts(p) for p in train_files]
    parts = facts.get("train_parts", [facts["train"]])
    shape_name = facts["train"]["config"]["shape_model"]
    space = ShapeSpace.from_shape_model(load_model(shape_name))
    for f in parts + [facts["val"]]:
        if f["shape_model_fingerprint"] not in (None, space.fingerprint):
            raise InputError(f"the data were simulated with another version of the shape model "
                             f"{shape_name!r}; simulate them again", f["path"])
        if f["config"]["shape_model"] != shape_name or f["config"]["image_size"] != facts["train"]["config"]["image_size"]:
            raise InputError(f"this part has another shape model or image size than {train_files[0]}", f["path"])
    size = int(facts["train"]["config"]["image_size"])
    net_cfg = ReconNetConfig(n_modes=space.n_modes, base_channels=base_channels, levels=levels, image_size=size,
                             coord_centre_mm=tuple(float(c) for c in space.centre_mm), coord_scale_mm=100.0,
                             fine_channels=fine_channels or 0)
    start = None
    resumed = resumed_run_info(config)
    resuming = resumed is not None
    if resumed and "net_config" in resumed:  # the network the run started with (e.g. from --init)
        net_cfg = ReconNetConfig.from_dict(resumed["net_config"])
    if resumed and "loss_weights" in resumed:  # and the loss it was trained with
        saved = ReconLossWeights(**resumed["loss_weights"])
        if saved != loss_weights and loss_weights != ReconLossWeights():
            log.warning("resuming %s with the loss weights it started with (%s), not the ones given (%s)",
                        config.out_dir, saved, loss_weights)
        loss_weights = saved
    if resumed and "max_zoom" in resumed:
        max_zoom = float(resumed["max_zoom"])
    if init is not None and not resuming:
        start, _space, _info = load_recon_model(init)
        if _space.fingerprint != space.fingerprint or start.config.image_size != size:
            raise InputError("the initial model was trained for another shape model or image size", init)
        net_cfg = start.config
        if fine_channels is not None and fine_channels != net_cfg.fine_channels:
            if net_cfg.fine_channels:
                raise InputError(f"the initial model has a full-resolution branch of width {net_cfg.fine_channels}; "
                                 f"it cannot change to {fine_channels}", init)
            net_cfg = dataclasses.replace(net_cfg, fine_channels=fine_channels)
    torch.manual_seed(config.seed)
    net = ReconNet(net_cfg)
    if start is not None:
        load_adding_branch(net, start.state_dict(), init)
    loss = ReconLoss.for_network(space, net_cfg.coord_scale_mm, loss_weights, n_vertices=n_loss_vertices)
    train_set = ConcatDataset([ReconH5Dataset(p, augment=augment) for p in train_files])
    if max_zoom != 1.0:
        from xrecon.methods.recon.data import ReconDataConfig
        from xrecon.sim.augment import ZoomAugment

        train_set = ZoomAugment(train_set, ReconDataConfig(image_size=size).camera().K[0], max_zoom)
    val_set = ReconH5Dataset(val_h5)
    command = command or " ".join(sys.argv)
    run_info = {"method": "recon", "command": command, "net_config": net_cfg.to_dict(), "data": facts,
                "init": None if start is None else str(init),
                "loss_weights": dataclasses.asdict(loss_weights), "max_zoom": float(max_zoom),
                "augment": getattr(augment, "__name__", str(augment))}
    result = train(net, loss, train_set, val_set, config, loss.metrics, run_info=run_info)
    out = Path(model_out) if model_out else Path(config.out_dir) / "recon_model.pt"
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        if result.best_checkpoint is not None:
            load_weights(net, result.best_checkpoint)
        best = min(result.history, key=lambda h: h.get("val", {}).get("loss", np.inf)) if result.history else {}
        info = {"command": command, "train_config": config.to_dict(), "data": facts,
                "epochs_run": len(result.history), "stopped_early": result.stopped_early,
                "best_epoch": best.get("epoch"), "best_val": best.get("val"), "best_val_metrics": best.get("val_metrics"),
                "train_seconds": float(sum(h["epoch_seconds"] for h in result.history))}
        info["mask_threshold"], info["mask_iou_by_threshold_val"] = calibrate_mask_threshold(net.cpu(), val_h5)
        save_recon_model(out, net.cpu().eval(), space, shape_name, info)
        log.info("model written to %s", out)
    return out


def export_checkpoint(run_dir: str | Path, checkpoint: str = "best", out: str | Path | None = None) -> Path:
    """Write a model file from a run's checkpoint (``best`` or ``last``), e.g. while it
    still trains. Uses the run's ``config.json`` for the network and data facts."""
    from shape_models.bundled import load_model

    run_dir = Path(run_dir)
    try:
        cfg = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"not a training run folder ({exc})", run_dir) from exc
    info = cfg["run_info"]
    net = ReconNet(ReconNetConfig.from_dict(info["net_config"]))
    ckpt = run_dir / "checkpoints" / f"{checkpoint}.pt"
    load_weights(net, ckpt)
    state = load_torch_file(ckpt, what="checkpoint")
    shape_name = info["data"]["train"]["config"]["shape_model"]
    space = ShapeSpace.from_shape_model(load_model(shape_name))
    out = Path(out) if out else run_dir / f"recon_model_{checkpoint}.pt"
    threshold, ious = calibrate_mask_threshold(net, info["data"]["val"]["path"])
    save_recon_model(out, net.eval(), space, shape_name,
                     {"command": info.get("command"), "train_config": cfg["train_config"], "data": info["data"],
                      "checkpoint": str(ckpt), "epochs_run": state.get("epoch"), "mask_threshold": threshold,
                      "mask_iou_by_threshold_val": ious})
    return out


@torch.no_grad()
def calibrate_mask_threshold(net: ReconNet, val_h5: str | Path, thresholds=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5)) -> tuple[float, dict]:
    """The bone-probability threshold with the best mean mask IoU on a validation file,
    and the IoU of each threshold."""
    import torch.nn.functional as F

    ds = ReconH5Dataset(val_h5)
    net.eval()
    ious = {t: [] for t in thresholds}
    for i in range(0, len(ds), 8):
        items = [ds[j] for j in range(i, min(i + 8, len(ds)))]
        x = torch.stack([it["image"] for it in items])
        prob = torch.sigmoid(net(x).mask_logit)
        gt = torch.stack([it["mask"] for it in items]) > 0.5
        for t in thresholds:
            pm = prob > t
            ious[t] += ((pm & gt).sum((1, 2)).float() / (pm | gt).sum((1, 2)).clamp_min(1).float()).tolist()
    mean = {float(t): float(np.mean(v)) for t, v in ious.items()}
    best = max(mean, key=mean.get)
    return best, mean
