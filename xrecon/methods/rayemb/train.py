"""Training entry point of RayEmb (through the shared loop).

:func:`train_rayemb` trains a :class:`~xrecon.methods.rayemb.network.RayEmbNet`
with the contrastive loss (:class:`~xrecon.methods.rayemb.loss.RayEmbLoss`) on
reconstruction datasets read by subject
(:class:`~xrecon.methods.rayemb.data.RayEmbDataset`), with
:func:`xrecon.train.train` (seeded, resumable, DDP under ``torchrun``), then
writes the model file from the best validation checkpoint with the command
that made it. A batch is ``batch_size`` subjects of ``views`` images each.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import ConcatDataset

from xrecon.errors import InputError
from xrecon.methods.rayemb.data import RayEmbDataset
from xrecon.methods.rayemb.loss import RayEmbLoss
from xrecon.methods.rayemb.model_io import save_rayemb_model
from xrecon.methods.rayemb.network import RayEmbNet, RayEmbNetConfig
from xrecon.train import TrainConfig, load_weights, resumed_run_info, train

log = logging.getLogger(__name__)


def _facts(path: Path) -> dict:
    try:
        with h5py.File(path, "r") as h5:
            return {"path": str(path), "n_images": int(len(h5["image"])), "config": json.loads(h5.attrs["config"])}
    except (OSError, KeyError) as exc:
        raise InputError(f"not a reconstruction dataset ({exc})", path) from exc


def train_rayemb(train_h5: Sequence[str | Path], val_h5: str | Path, config: TrainConfig, *,
                 net_config: RayEmbNetConfig = RayEmbNetConfig(), views: int = 5, val_views: int = 4,
                 landmarks: int = 16, tau: float = 0.03, augment=None, command: str | None = None,
                 model_out: str | Path | None = None) -> Path:
    """Train on the files ``train_h5`` (validate on ``val_h5``) and write ``rayemb_model.pt``.

    Args:
        train_h5, val_h5: files of :func:`xrecon.methods.recon.data.generate_dataset`.
        config: loop settings; ``batch_size`` counts subjects.
        net_config: network size (a resumed run keeps the one it started with).
        views, val_views: images per subject in a training / validation item.
        landmarks: landmarks drawn per subject and item.
        tau: the loss's temperature.
        augment: ``f(image (1, H, W)) -> image`` for training images.
        command: the command line recorded in the model file.
        model_out: default ``<out_dir>/rayemb_model.pt``.
    """
    files = [Path(p) for p in train_h5]
    if not files:
        raise InputError("no training data (train*.h5) given")
    facts = {"train": [_facts(p) for p in files], "val": _facts(Path(val_h5))}
    sizes = {f["config"]["image_size"] for f in facts["train"] + [facts["val"]]}
    if sizes != {net_config.image_size}:
        raise InputError(f"the data's image sizes {sorted(sizes)} differ from the network's {net_config.image_size}")
    resumed = resumed_run_info(config)
    if resumed and "net_config" in resumed:
        net_config = RayEmbNetConfig.from_dict(resumed["net_config"])
    torch.manual_seed(config.seed)
    net = RayEmbNet(net_config)
    loss = RayEmbLoss(tau=tau)
    train_set = ConcatDataset([RayEmbDataset(p, views=views, landmarks=landmarks, augment=augment) for p in files])
    val_set = RayEmbDataset(val_h5, views=val_views, landmarks=landmarks, deterministic=True)
    command = command or " ".join(sys.argv)
    run_info = {"method": "rayemb", "command": command, "net_config": net_config.to_dict(), "data": facts,
                "views": views, "val_views": val_views, "landmarks": landmarks, "tau": tau,
                "augment": getattr(augment, "__name__", str(augment))}
    result = train(net, loss, train_set, val_set, config, loss.metrics, run_info=run_info)
    out = Path(model_out) if model_out else Path(config.out_dir) / "rayemb_model.pt"
    if int(os.environ.get("RANK", "0")) == 0:
        if result.best_checkpoint is not None:
            load_weights(net, result.best_checkpoint)
        best = min(result.history, key=lambda h: h.get("val", {}).get("loss", np.inf)) if result.history else {}
        info = {"command": command, "train_config": config.to_dict(), "data": facts, "tau": tau, "views": views,
                "landmarks": landmarks, "epochs_run": len(result.history), "stopped_early": result.stopped_early,
                "best_epoch": best.get("epoch"), "best_val": best.get("val"),
                "best_val_metrics": best.get("val_metrics"),
                "images_seen": int(sum(h.get("images_seen", 0) for h in result.history)) * views,
                "train_seconds": float(sum(h["epoch_seconds"] for h in result.history))}
        save_rayemb_model(out, net.cpu().eval(), info)
        log.info("model written to %s", out)
    return out
