"""``xrecon train``: train the networks. ``recon`` (patient-wide reconstruction,
this file), ``scr`` (patient-specific scene coordinates, cli/train_scr.py) and
``rayemb`` (ray embeddings, cli/train_rayemb.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xrecon.cli.common import check_output_folder, handle_errors, positive

app = typer.Typer(help="Train the networks (single process, or DDP under torchrun).", no_args_is_help=True,
                  rich_markup_mode=None)


@app.command("recon")
@handle_errors
def recon(
    out: Path = typer.Option(..., "--out", help="Output folder: data/, checkpoints/, config.json, history.json, "
                                                 "curves.png, recon_model.pt (+ .json)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Folder holding train.h5 / val.h5 (default OUT/data); "
                                                              "generated when missing."),
    train_shapes: Optional[int] = typer.Option(None, min=1, help="Train-split subjects simulated (default: all)."),
    first_shape: int = typer.Option(0, min=0, help="First train-split subject simulated (to add a part of the split)."),
    train_file: str = typer.Option("train.h5", help="Name of the training file to simulate when missing; "
                                                    "training reads every train*.h5 of the data folder."),
    random_shapes: int = typer.Option(0, min=0, help="Extra random draws from the shape model."),
    views: int = typer.Option(24, min=1, help="Simulated views per training shape."),
    no_bone: bool = typer.Option(False, "--no-bone", help="Simulate negatives (the bodies without their bone) "
                                                          "into --train-file."),
    val_shapes: Optional[int] = typer.Option(None, min=1, help="Validation-split subjects (default: all)."),
    val_views: int = typer.Option(4, min=1, help="Views per validation shape (seed-002 protocol)."),
    protocol: str = typer.Option("mixed", help="Training pose protocol: mixed | wide | seed002."),
    image_size: int = typer.Option(128, min=16, help="Detector pixels (square)."),
    epochs: int = typer.Option(20, min=1, help="Passes over the training set."),
    batch_size: int = typer.Option(16, min=1, help="Images per step (per process under torchrun)."),
    lr: float = typer.Option(2e-3, min=0, help="Peak learning rate (AdamW, warm-up + cosine)."),
    base_channels: int = typer.Option(16, min=1, help="U-Net width (CPU 16; GPU 32-64)."),
    levels: int = typer.Option(4, min=1, help="U-Net levels (CPU 4; 256-512 px: 5)."),
    fine_channels: Optional[int] = typer.Option(None, min=0, help="Width of the full-resolution branch (0 = none; default: "
                                                           "the --init model's, else 0). Added to an --init model "
                                                           "without one, it starts as a no-op; an --init model's "
                                                           "branch cannot be removed or resized."),
    threads: Optional[int] = typer.Option(None, min=1, help="torch threads (default: leave as is)."),
    workers: int = typer.Option(0, min=0, help="Data loader worker processes."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    time_limit_min: Optional[float] = typer.Option(None, callback=positive, help="Stop cleanly after this many minutes."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Turn off load-time domain randomisation."),
    seed: int = typer.Option(0, help="Seed of the simulation, the weights and the sampling."),
    scene: str = typer.Option("bone", help="Phantoms simulated: bone (the bone in a soft-tissue halo) | film "
                                           "(femora, sacrum, lumbar stand-in, body, gas, metal: docs/anatomy.md)."),
    population: str = typer.Option("ssm", help="Shapes simulated: ssm (the shape model's own subjects and draws) | "
                                               "deformed (those subjects moved beyond the model's span, "
                                               "docs/populations.md); training and validation alike."),
    simulate_only: bool = typer.Option(False, "--simulate-only", help="Simulate the data, then stop."),
    resume: bool = typer.Option(True, help="Continue from OUT/checkpoints/last.pt when it exists."),
    init: Optional[Path] = typer.Option(None, help="Start from the weights of this model file (recon_model.pt) "
                                                   "with a fresh optimiser and schedule (ignored on resume)."),
    layout_weight: float = typer.Option(0.0, min=0, help="Weight of the in-plane scale term of the loss (1 unit = a 1 percent "
                                                  "scale error of the image's predicted coordinates, which PnP "
                                                  "turns into depth; 0 = off)."),
    along_ray_weight: float = typer.Option(1.0, min=0, help="Weight of the coordinate error along each pixel's ray (1 = "
                                                     "plain Euclidean error; lower values favour the part across "
                                                     "the ray, which PnP sees most; a heuristic, since predictions "
                                                     "are snapped onto the mean surface: keep it well above 0)."),
    coupled_nll: bool = typer.Option(False, "--coupled-nll", help="Train the coordinates with the Laplace likelihood "
                                                                  "of their predicted sigma (errors weighted by "
                                                                  "0.1 / sigma) instead of the plain error plus a "
                                                                  "detached sigma term."),
    mask_weight: float = typer.Option(0.2, min=0, help="Weight of the bone mask's cross-entropy in the loss (the CT "
                                                "registration's silhouette step fits the CT to that mask)."),
    zoom_aug: float = typer.Option(1.0, "--zoom-aug", min=1, help="Zoom half of the training images in about the principal "
                                                           "point by up to this factor (exact for the per-pixel "
                                                           "targets: a longer focal length; zoomed images do not "
                                                           "train the size mode; 1 = off)."),
) -> None:
    """Train the patient-wide reconstruction network on simulated X-rays of shape-model instances.

    Simulates OUT/data/{train,val}.h5 when missing (train split of the bundled
    pelvis model, `--protocol` poses; validation split, seed-002 poses), then
    trains and writes OUT/recon_model.pt. More training data: simulate another
    part with `--simulate-only --train-file train_b.h5 --first-shape 80 --seed 1`
    (or `--random-shapes N`); every train*.h5 of the data folder is used. On GPUs, simulate first (one
    process), then `torchrun --nproc_per_node=N -m xrecon.cli.main train recon ...`.
    """
    import logging
    import os
    import sys

    import torch

    from xrecon.errors import InputError
    from xrecon.methods.recon.data import ReconDataConfig, generate_dataset
    from xrecon.methods.recon.loss import ReconLossWeights
    from xrecon.methods.recon.train import train_recon
    from xrecon.train import TrainConfig

    check_output_folder(out)
    if init is not None:  # a bad --init is refused before any simulation
        from xrecon.api import model_kind

        if model_kind(init) != "recon":
            raise InputError("--init needs a reconstruction model (recon_model.pt), not a patient-specific one", init)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if threads:
        torch.set_num_threads(threads)
    data_dir = data or out / "data"
    if not train_file.startswith("train") or not train_file.endswith(".h5") or "/" in train_file:
        raise InputError(f"--train-file must be a file name train*.h5, got {train_file!r}")
    paths = {"train": data_dir / train_file, "val": data_dir / "val.h5"}
    specs = {
        "train": ReconDataConfig(split="train", n_shapes=train_shapes, first_shape=first_shape,
                                 n_random_shapes=random_shapes, with_bone=not no_bone,
                                 views_per_shape=views, protocol=protocol, image_size=image_size, seed=seed,
                                 scene=scene, population=population),
        "val": ReconDataConfig(split="val", n_shapes=val_shapes, views_per_shape=val_views, protocol="seed002",
                               image_size=image_size, seed=seed + 1, scene=scene, population=population),
    }
    for split, path in paths.items():
        if path.is_file():
            continue
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise InputError(f"{path} is missing: simulate the data in one process first "
                             "(the same command with --simulate-only, without torchrun)")
        typer.echo(f"simulating {split} data into {path} ...")
        generate_dataset(path, specs[split])
    if simulate_only:
        typer.echo(f"data: {paths['train']}, {paths['val']}")
        return
    loss_weights = ReconLossWeights(layout=layout_weight, along_ray=along_ray_weight, coupled=coupled_nll,
                                    mask=mask_weight)  # checks them
    augment = None
    if not no_augment:
        from xrecon.methods.recon.data import XrayAugment

        augment = XrayAugment(film=scene == "film")  # film-like scenes also get collimation
    cfg = TrainConfig(out_dir=str(out), epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      num_workers=workers, num_threads=threads, device=device, time_limit_min=time_limit_min,
                      resume=resume, monitor="loss", warmup_steps=100)
    train_paths = sorted(data_dir.glob("train*.h5"))
    path = train_recon(train_paths, paths["val"], cfg, init=init, base_channels=base_channels, levels=levels,
                       fine_channels=fine_channels, augment=augment, command=" ".join(["xrecon"] + sys.argv[1:]),
                       loss_weights=loss_weights, max_zoom=zoom_aug)
    typer.echo(f"model: {path}")
    typer.echo(f"curves: {out / 'curves.png'}; history: {out / 'history.json'}")


try:  # the scene-coordinate command lives in its own file (its owner's)
    from xrecon.cli.train_scr import scr as _scr

    app.command("scr")(_scr)
except ModuleNotFoundError as _exc:  # pragma: no cover - absent in a partial checkout
    if _exc.name != "xrecon.cli.train_scr":
        raise

try:  # RayEmb's command lives in its own file (cli/train_rayemb.py)
    from xrecon.cli.train_rayemb import rayemb as _rayemb

    app.command("rayemb")(_rayemb)
except ModuleNotFoundError as _exc:  # pragma: no cover - absent in a partial checkout
    if _exc.name != "xrecon.cli.train_rayemb":
        raise
