"""``xrecon train rayemb``: train the RayEmb ray-embedding network (seed 003) on
simulated X-rays of the open-world pelvis population.

The owner of ``cli/train.py`` adds :func:`rayemb` to the ``xrecon train`` group.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xrecon.cli.common import check_output_folder, handle_errors, positive


@handle_errors
def rayemb(
    out: Path = typer.Option(..., "--out", help="Output folder: checkpoints/, config.json, history.json, curves.png, "
                                                 "rayemb_model.pt (+ .json)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder holding train*.h5 / val.h5 (default OUT/data), "
                                                              "files of `xrecon train recon --simulate-only`; "
                                                              "simulated when missing."),
    train_shapes: Optional[int] = typer.Option(None, min=1, help="Train-split subjects simulated when the data are "
                                                                 "missing (default: all)."),
    sim_views: int = typer.Option(8, min=3, help="Views per training subject simulated when the data are missing."),
    population: str = typer.Option("deformed", help="Shapes simulated when the data are missing: ssm | deformed "
                                                    "(docs/populations.md)."),
    scene: str = typer.Option("film", help="Phantoms simulated when the data are missing: bone | film."),
    views: int = typer.Option(5, min=3, help="Images of one subject per training item (one query, the rest "
                                             "templates, in turn)."),
    val_views: int = typer.Option(4, min=3, help="Images per validation subject."),
    landmarks: int = typer.Option(16, min=1, help="3D landmarks drawn per subject and item."),
    tau: float = typer.Option(0.03, callback=positive, help="Temperature of the contrastive loss."),
    embed_dim: int = typer.Option(32, min=4, help="Ray embedding channels."),
    image_size: int = typer.Option(128, min=16, help="Detector pixels (square)."),
    epochs: int = typer.Option(20, min=1, help="Passes over the training subjects."),
    batch_size: int = typer.Option(3, min=1, help="Subjects per step (per process under torchrun)."),
    lr: float = typer.Option(2e-3, min=0, help="Peak learning rate (AdamW, warm-up + cosine)."),
    base_channels: int = typer.Option(16, min=1, help="U-Net width (CPU 16; GPU 32-64)."),
    levels: int = typer.Option(4, min=2, help="U-Net levels."),
    input_stride: int = typer.Option(2, min=1, max=2, help="2: half-resolution U-Net, output upsampled (CPU); 1: full."),
    threads: Optional[int] = typer.Option(None, min=1, help="torch threads (default: leave as is)."),
    workers: int = typer.Option(0, min=0, help="Data loader worker processes."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    time_limit_min: Optional[float] = typer.Option(None, callback=positive, help="Stop cleanly after this many minutes."),
    max_steps_per_epoch: Optional[int] = typer.Option(None, min=1, help="Cap on steps per epoch."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Turn off load-time domain randomisation."),
    seed: int = typer.Option(0, help="Seed of the simulation, the weights and the sampling."),
    resume: bool = typer.Option(True, help="Continue from OUT/checkpoints/last.pt when it exists."),
) -> None:
    """Train the RayEmb network: per-pixel ray embeddings whose rays through one 3D
    point share a subspace (docs/rayemb.md).

    Reads every train*.h5 of the data folder and val.h5 (the reconstruction
    datasets: same subject splits as the benchmarks), simulating train.h5 and
    val.h5 when missing. On GPUs, simulate first (one process), then
    `torchrun --nproc_per_node=N -m xrecon.cli.main train rayemb ...`.
    """
    import logging
    import os
    import sys

    import torch

    from xrecon.errors import InputError
    from xrecon.methods.rayemb.network import RayEmbNetConfig
    from xrecon.methods.rayemb.train import train_rayemb
    from xrecon.methods.recon.data import ReconDataConfig, XrayAugment, generate_dataset
    from xrecon.train import TrainConfig

    check_output_folder(out)
    net_config = RayEmbNetConfig(embed_dim=embed_dim, base_channels=base_channels, levels=levels,
                                 input_stride=input_stride, image_size=image_size)  # checks them
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if threads:
        torch.set_num_threads(threads)
    data_dir = data or out / "data"
    specs = {
        data_dir / "train.h5": ReconDataConfig(split="train", n_shapes=train_shapes, views_per_shape=sim_views,
                                               protocol="mixed", image_size=image_size, seed=seed, scene=scene,
                                               population=population),
        data_dir / "val.h5": ReconDataConfig(split="val", views_per_shape=val_views, protocol="seed002",
                                             image_size=image_size, seed=seed + 1, scene=scene, population=population),
    }
    for path, spec in specs.items():
        if path.name == "train.h5" and any(data_dir.glob("train*.h5")):
            continue
        if path.is_file():
            continue
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise InputError(f"{path} is missing: simulate the data in one process first (without torchrun)")
        typer.echo(f"simulating {path} ...")
        generate_dataset(path, spec)
    cfg = TrainConfig(out_dir=str(out), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, num_workers=workers,
                      num_threads=threads, device=device, time_limit_min=time_limit_min, resume=resume,
                      monitor="argmax_error_px", max_steps_per_epoch=max_steps_per_epoch, warmup_steps=50)
    augment = None if no_augment else XrayAugment(film=scene == "film")
    path = train_rayemb(sorted(data_dir.glob("train*.h5")), data_dir / "val.h5", cfg, net_config=net_config,
                        views=views, val_views=val_views, landmarks=landmarks, tau=tau, augment=augment,
                        command=" ".join(["xrecon"] + sys.argv[1:]))
    typer.echo(f"model: {path}")
    typer.echo(f"curves: {out / 'curves.png'}; history: {out / 'history.json'}")
