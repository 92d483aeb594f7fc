"""The one training loop every xrecon network uses.

It is deliberately small: a method supplies an ``nn.Module``, a loss function
and two datasets; the loop owns seeding, batching, the optimiser and schedule,
checkpoints that resume, distributed data parallel (DDP) under ``torchrun``,
progress bars, and the files written next to the outputs.

Contract
--------
``loss_fn(model, batch) -> (loss, logs)``
    ``model`` is the (possibly DDP-wrapped) module: call it, do not reach into
    it, so gradients synchronise. ``batch`` is what the ``DataLoader`` yields,
    already moved to the device (tensors inside dicts / lists / tuples are
    moved). ``loss`` is a scalar tensor; ``logs`` is a ``{name: float or
    scalar tensor}`` dict of extra terms to average and record (may be empty).
``metrics_fn(model, batch) -> {name: (B,) tensor}`` (optional)
    Validation metrics, one value per case so that the aggregate (a mean over
    every validation case, across ranks) never hides a failing case.

Outputs under ``config.out_dir`` (written by rank 0, atomically):
    ``config.json``   the resolved :class:`TrainConfig`, the method's own
                      ``run_info`` (e.g. its network config and the command that
                      started the run) and library versions;
    ``history.json``  one record per epoch: train loss and logs, validation
                      loss, logs and metrics, learning rate, wall time;
    ``curves.png``    the training curves of ``history.json``;
    ``checkpoints/last.pt``  everything needed to resume (model, optimiser,
                      schedule, epoch, RNG states, history);
    ``checkpoints/best.pt``  model weights at the best ``config.monitor`` value.

Distributed: launched with ``torchrun --nproc_per_node=N``, the loop joins the
process group (``gloo`` on CPU, ``nccl`` on CUDA), wraps the model in
``DistributedDataParallel`` and shards the training set with a seeded
``DistributedSampler``; ``batch_size`` is per process. Validation is sharded
without padding and reduced with sums, so it is exact.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from xrecon.errors import InputError
from xrecon.io import atomic_path, atomic_write_text, load_torch_file

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Any], "tuple[torch.Tensor, Mapping[str, Any]]"]
MetricsFn = Callable[[nn.Module, Any], "Mapping[str, torch.Tensor]"]


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters and run settings of :func:`train`.

    Attributes:
        out_dir: folder for checkpoints, curves, config (created).
        epochs: number of passes over the training set.
        batch_size: images per step *per process*.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW weight decay.
        schedule: ``"cosine"`` (linear warm-up then cosine decay to
            ``lr * min_lr_ratio``) or ``"constant"``.
        warmup_steps: linear warm-up length (steps).
        min_lr_ratio: final learning rate as a fraction of ``lr`` (cosine).
        grad_clip_norm: clip the global gradient norm (``None``: no clipping).
        seed: seeds Python, NumPy and torch (rank-offset), the sampler and
            the data loader workers.
        num_workers: data loader worker processes.
        num_threads: ``torch.set_num_threads`` for this process (``None``: leave).
        device: ``"auto"`` (CUDA if available, else CPU), ``"cpu"`` or ``"cuda"``.
        amp: bfloat16 autocast on CUDA (ignored on CPU).
        resume: continue from ``out_dir/checkpoints/last.pt`` when it exists.
        monitor: validation quantity that selects ``best.pt``
            (``"loss"`` or a metric / log name).
        monitor_mode: ``"min"`` or ``"max"``.
        val_every: validate every this many epochs (and after the last).
        max_steps_per_epoch: cap on steps per epoch (``None``: full pass).
        time_limit_min: stop cleanly (checkpoint written) after this many
            minutes of wall time (``None``: no limit).
        progress: show tqdm bars (rank 0 only).
    """

    out_dir: str
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    warmup_steps: int = 100
    min_lr_ratio: float = 0.02
    grad_clip_norm: float | None = 5.0
    seed: int = 0
    num_workers: int = 0
    num_threads: int | None = None
    device: str = "auto"
    amp: bool = False
    resume: bool = True
    monitor: str = "loss"
    monitor_mode: str = "min"
    val_every: int = 1
    max_steps_per_epoch: int | None = None
    time_limit_min: float | None = None
    progress: bool = True

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise InputError(f"epochs and batch_size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if self.schedule not in ("cosine", "constant"):
            raise InputError(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if self.monitor_mode not in ("min", "max"):
            raise InputError(f"monitor_mode must be 'min' or 'max', got {self.monitor_mode!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise InputError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        """Build from a mapping (e.g. a JSON file); unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"unknown training settings {sorted(unknown)}; known: {sorted(names)}")
        return cls(**dict(d))


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank).

    Attributes:
        history: one dict per completed epoch (see module docstring).
        best_checkpoint: path of ``best.pt`` (``None`` when never validated).
        last_checkpoint: path of ``last.pt``.
        best_value: the best ``config.monitor`` value seen.
        stopped_early: True when ``time_limit_min`` ended the run.
    """

    history: list[dict] = field(default_factory=list)
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    best_value: float | None = None
    stopped_early: bool = False


# ---------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_kind: str) -> _Dist:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    import torch.distributed as dist

    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device_kind == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    return _Dist(rank, world, local)


def _resolve_device(cfg: TrainConfig, dist_info: _Dist) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InputError("device='cuda' requested but CUDA is not available")
        torch.cuda.set_device(dist_info.local_rank)
        return torch.device("cuda", dist_info.local_rank)
    return torch.device("cpu")


def _all_reduce_sum(values: torch.Tensor, dist_info: _Dist) -> torch.Tensor:
    if dist_info.enabled:
        import torch.distributed as dist

        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _barrier(dist_info: _Dist) -> None:
    if dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()


# ---------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    s = torch.initial_seed() % (2**32)
    np.random.seed(s)
    random.seed(s)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor inside nested dicts / lists / tuples to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def _lr_factor(step: int, total: int, cfg: TrainConfig) -> float:
    if cfg.warmup_steps > 0 and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, total - cfg.warmup_steps)
    p = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


def library_versions() -> dict[str, str]:
    """Versions of the libraries that decide a run's numbers."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ["xrecon", "numpy", "kornia", "roma", "open3d-cpu", "opencv-python-headless", "poselib", "diffdrr"]:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    out["cuda"] = torch.version.cuda or "none"
    return out


def _scalar(x: Any) -> float:
    return float(x.detach().float().mean()) if isinstance(x, torch.Tensor) else float(x)


def _batch_size_of(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        return _batch_size_of(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return _batch_size_of(batch[0])
    raise TypeError(f"cannot infer the batch size of a {type(batch).__name__}")


def plot_history(history: list[dict], path: Path) -> None:
    """Write the curves of ``history`` (train / val loss, then every val metric) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    metric_names = sorted({k for h in history for k in h.get("val_metrics", {})})
    n = 1 + len(metric_names)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    ax = axes[0, 0]
    ax.plot(epochs, [h["train"]["loss"] for h in history], "o-", label="train")
    ve = [(h["epoch"], h["val"]["loss"]) for h in history if h.get("val")]
    if ve:
        ax.plot(*zip(*ve), "s-", label="validation")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    for i, name in enumerate(metric_names, start=1):
        pts = [(h["epoch"], h["val_metrics"][name]) for h in history if name in h.get("val_metrics", {})]
        axes[0, i].plot(*zip(*pts), "s-", color="C1")
        axes[0, i].set_xlabel("epoch")
        axes[0, i].set_title(f"validation {name}")
        axes[0, i].grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model: nn.Module, loss_fn: LossFn, loader: DataLoader, device: torch.device,
             metrics_fn: MetricsFn | None = None, dist_info: _Dist | None = None,
             progress: bool = False) -> tuple[dict, dict]:
    """Mean loss / logs (weighted by batch size) and mean per-case metrics over ``loader``.

    Returns ``(losses, metrics)``; under DDP both are reduced over all ranks.
    """
    from tqdm import tqdm

    dist_info = dist_info or _Dist()
    was_training = model.training
    model.eval()
    sums: dict[str, float] = {}
    count = 0.0
    metric_sums: dict[str, float] = {}
    metric_count = 0.0
    for batch in tqdm(loader, desc="val", leave=False, disable=not progress):
        batch = to_device(batch, device)
        b = _batch_size_of(batch)
        loss, logs = loss_fn(model, batch)
        for k, v in {"loss": loss, **dict(logs)}.items():
            sums[k] = sums.get(k, 0.0) + _scalar(v) * b
        count += b
        if metrics_fn is not None:
            for k, v in metrics_fn(model, batch).items():
                v = torch.as_tensor(v, dtype=torch.float64).reshape(-1)
                metric_sums[k] = metric_sums.get(k, 0.0) + float(v.sum())
            metric_count += b
    model.train(was_training)
    keys, mkeys = sorted(sums), sorted(metric_sums)
    vec = torch.tensor([sums[k] for k in keys] + [count] + [metric_sums[k] for k in mkeys] + [metric_count],
                       dtype=torch.float64)
    if dist_info.enabled:
        vec = _all_reduce_sum(vec.to(device), dist_info).cpu()
    n, nm = float(vec[len(keys)]), float(vec[-1])
    losses = {k: float(vec[i]) / max(n, 1.0) for i, k in enumerate(keys)}
    metrics = {k: float(vec[len(keys) + 1 + i]) / max(nm, 1.0) for i, k in enumerate(mkeys)}
    return losses, metrics


# ---------------------------------------------------------------------- training
def train(
    model: nn.Module,
    loss_fn: LossFn,
    train_dataset: Dataset,
    val_dataset: Dataset | None,
    config: TrainConfig,
    metrics_fn: MetricsFn | None = None,
    *,
    collate_fn: Callable | None = None,
    run_info: Mapping[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` (in place) and return a :class:`TrainResult`.

    Args:
        model: the network; its weights at the end are the *last* epoch's
            (``best.pt`` holds the best).
        loss_fn: ``(model, batch) -> (loss, logs)``, see module docstring.
        train_dataset, val_dataset: map-style datasets (``val_dataset`` may be None).
        config: :class:`TrainConfig`.
        metrics_fn: optional per-case validation metrics.
        collate_fn: passed to the ``DataLoader`` (default collation otherwise).
        run_info: JSON-ready facts about the run written into ``config.json``
            (the method's network config, the command line, data description).
    """
    from tqdm import tqdm

    cfg = config
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    want_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    dist_info = _init_distributed("cuda" if want_cuda else "cpu")
    device = _resolve_device(cfg, dist_info)
    seed_everything(cfg.seed + dist_info.rank)
    out = Path(cfg.out_dir)
    ckpt_dir = out / "checkpoints"
    if dist_info.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
    progress = cfg.progress and dist_info.is_main

    model.to(device)
    train_model: nn.Module = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        train_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    # data
    gen = torch.Generator()
    gen.manual_seed(cfg.seed)
    sampler = None
    if dist_info.enabled:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(train_dataset, num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     shuffle=True, seed=cfg.seed, drop_last=True)
    loader_kw = dict(num_workers=cfg.num_workers, collate_fn=collate_fn, worker_init_fn=_worker_init,
                     pin_memory=device.type == "cuda", persistent_workers=cfg.num_workers > 0)
    train_loader = DataLoader(train_dataset, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                              drop_last=len(train_dataset) >= cfg.batch_size * dist_info.world_size,
                              generator=gen, **loader_kw)
    val_loader = None
    if val_dataset is not None and len(val_dataset) > 0:
        shard = Subset(val_dataset, list(range(dist_info.rank, len(val_dataset), dist_info.world_size)))
        val_loader = DataLoader(shard, batch_size=cfg.batch_size, shuffle=False, **loader_kw)
    if len(train_loader) == 0:
        raise InputError(f"training set of {len(train_dataset)} items gives no batch of {cfg.batch_size}")

    steps_per_epoch = len(train_loader)
    if cfg.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, total_steps, cfg))

    result = TrainResult(last_checkpoint=ckpt_dir / "last.pt")
    start_epoch, global_step = 0, 0
    sign = 1.0 if cfg.monitor_mode == "min" else -1.0
    best = math.inf
    last_path = ckpt_dir / "last.pt"
    if cfg.resume and last_path.exists():
        state = load_torch_file(last_path, map_location=device, what="checkpoint")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, global_step = state["epoch"], state["global_step"]
        result.history = state["history"]
        best = state["best"]
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        gen.set_state(rng["loader"])
        if dist_info.is_main:
            log.info("resumed from %s at epoch %d", last_path, start_epoch)
    if math.isfinite(best):
        result.best_value = sign * best
        result.best_checkpoint = ckpt_dir / "best.pt"

    if dist_info.is_main:
        resolved = {"train_config": cfg.to_dict(), "run_info": dict(run_info or {}),
                    "world_size": dist_info.world_size, "device": str(device),
                    "model_class": type(model).__name__,
                    "n_parameters": int(sum(p.numel() for p in model.parameters())),
                    "n_train": len(train_dataset), "n_val": len(val_dataset) if val_dataset is not None else 0,
                    "versions": library_versions()}
        atomic_write_text(out / "config.json", json.dumps(resolved, indent=2, default=str))

    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if (cfg.amp and device.type == "cuda")
                else contextlib.nullcontext())
    t0 = time.monotonic()
    model.train()
    for epoch in range(start_epoch, cfg.epochs):
        if sampler is not None:
            sampler.set_epoch(epoch)
        sums: dict[str, float] = {}
        n_seen = 0
        t_epoch = time.monotonic()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for step, batch in enumerate(train_loader):
            if step >= steps_per_epoch:
                break
            batch = to_device(batch, device)
            b = _batch_size_of(batch)
            with autocast:
                loss, logs = loss_fn(train_model, batch)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at epoch {epoch + 1}, step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
            optimizer.step()
            scheduler.step()
            global_step += 1
            for k, v in {"loss": loss, **dict(logs)}.items():
                sums[k] = sums.get(k, 0.0) + _scalar(v) * b
            n_seen += b
            bar.update(1)
            bar.set_postfix(loss=f"{sums['loss'] / n_seen:.4g}")
        bar.close()
        keys = sorted(sums)
        vec = _all_reduce_sum(torch.tensor([sums[k] for k in keys] + [n_seen], dtype=torch.float64).to(device),
                              dist_info).cpu()
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": global_step,
            "lr": optimizer.param_groups[0]["lr"],
            "train": {k: float(vec[i] / vec[-1]) for i, k in enumerate(keys)},
            "images_seen": int(vec[-1]),
            "epoch_seconds": time.monotonic() - t_epoch,
        }
        out_of_time = cfg.time_limit_min is not None and (time.monotonic() - t0) / 60 > cfg.time_limit_min
        # every rank must agree on stopping, or collectives deadlock
        stop = _all_reduce_sum(torch.tensor([float(out_of_time)], device=device), dist_info).item() > 0
        is_last = epoch + 1 == cfg.epochs or stop
        if val_loader is not None and ((epoch + 1) % cfg.val_every == 0 or is_last):
            losses, metrics = evaluate(train_model, loss_fn, val_loader, device, metrics_fn, dist_info, progress)
            record["val"], record["val_metrics"] = losses, metrics
            value = {**losses, **metrics}.get(cfg.monitor)
            if value is None:
                raise InputError(f"monitor {cfg.monitor!r} is not among the validation outputs "
                                 f"{sorted({**losses, **metrics})}")
            if sign * value < best:
                best = sign * value
                result.best_value = value
                result.best_checkpoint = ckpt_dir / "best.pt"
                if dist_info.is_main:
                    with atomic_path(ckpt_dir / "best.pt") as tmp:
                        torch.save({"model": model.state_dict(), "epoch": epoch + 1, cfg.monitor: value}, tmp)
        result.history.append(record)
        if dist_info.is_main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch + 1, "global_step": global_step,
                     "history": result.history, "best": best,
                     "rng": {"python": random.getstate(), "numpy": _numpy_rng_state(),
                             "torch": torch.get_rng_state(), "loader": gen.get_state()}}
            with atomic_path(last_path) as tmp:
                torch.save(state, tmp)
            atomic_write_text(out / "history.json", json.dumps(result.history, indent=2))
            plot_history(result.history, out / "curves.png")
            msg = f"epoch {epoch + 1}/{cfg.epochs} train loss {record['train']['loss']:.4g}"
            if "val" in record:
                msg += f" val loss {record['val']['loss']:.4g}"
                msg += "".join(f" {k} {v:.4g}" for k, v in record["val_metrics"].items())
            log.info(msg)
        _barrier(dist_info)
        if stop:
            result.stopped_early = True
            if dist_info.is_main:
                log.info("time limit of %.1f min reached after epoch %d", cfg.time_limit_min, epoch + 1)
            break
    return result


def _numpy_rng_state() -> tuple:
    """numpy's global RNG state with its key array as a list, so a checkpoint holds
    only plain data and loads with weights-only unpickling (``np.random.set_state``
    takes it back as it is)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return name, keys.tolist(), pos, has_gauss, cached


def load_weights(model: nn.Module, checkpoint: str | Path, map_location: str = "cpu") -> nn.Module:
    """Load the weights of a ``best.pt`` / ``last.pt`` checkpoint into ``model``."""
    path = Path(checkpoint)
    state = load_torch_file(path, map_location=map_location, what="checkpoint")
    model.load_state_dict(state["model"] if "model" in state else state)
    return model


def resumed_run_info(cfg: TrainConfig) -> dict | None:
    """The ``run_info`` the run in ``cfg.out_dir`` was started with, when :func:`train`
    will resume it (``cfg.resume`` and a ``last.pt`` exist); else ``None``. A method
    rebuilds its network from it (e.g. ``run_info["net_config"]``): the checkpoint
    holds the weights of the network the run began with, whatever the flags say now."""
    out = Path(cfg.out_dir)
    if not (cfg.resume and (out / "checkpoints" / "last.pt").exists()):
        return None
    path = out / "config.json"
    return json.loads(path.read_text()).get("run_info", {}) if path.is_file() else {}
