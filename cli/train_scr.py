"""``xrecon train scr``: train a patient-specific scene coordinate regression
model (seed 002) or one of its baselines on a dataset from ``xrecon simulate``.

The owner of ``cli/train.py`` adds :func:`scr` to the ``xrecon train`` group.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xrecon.cli.common import check_output_folder, handle_errors, positive


@handle_errors
def scr(
    ct: Path = typer.Option(..., "--ct", help="CT the dataset was simulated from (NIfTI / NRRD / DICOM folder)."),
    data: Path = typer.Option(..., "--data", help="Dataset folder written by `xrecon simulate`."),
    out: Path = typer.Option(..., "--out", help="Output folder (checkpoints, config.json, history.json, "
                                                 "curves.png, the model file)."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Label map on the CT grid (default: the "
                                                                  "bundled CT's when --ct is that CT)."),
    structures: Optional[str] = typer.Option(None, "--structures",
                                             help="Bone structures (names, ids or groups, comma-separated); "
                                                  "default: the dataset's own."),
    method: str = typer.Option("scr", "--method", help="scr | posenet | landmarks (baselines, same data)."),
    landmarks: str = typer.Option("thoracic_vertebrae,vertebrae_L1,sternum,ribs", "--landmarks",
                                  help="Structures whose centroids the landmark baseline detects."),
    epochs: int = typer.Option(12, min=1, help="Passes over the training set."),
    batch_size: int = typer.Option(16, min=1, help="Images per step (per process under torchrun)."),
    lr: float = typer.Option(1e-3, min=0, help="Peak learning rate (AdamW, cosine). Seed 002: 1e-4 constant."),
    schedule: str = typer.Option("cosine", help="cosine | constant."),
    base_channels: int = typer.Option(16, min=1, help="U-Net width (CPU 16; GPU 32-64)."),
    levels: int = typer.Option(4, min=1, help="U-Net levels (CPU 4; 512 px: 5)."),
    input_stride: int = typer.Option(2, min=1, max=2, help="2: half-resolution U-Net with dense upsampled output (CPU); "
                                             "1: full resolution (the seed's, for GPUs)."),
    fine_channels: int = typer.Option(0, min=0, help="Width of a full-resolution branch that corrects the upsampled "
                                              "output (input stride 2 only; 0 = none). With --init it is added "
                                              "to a model trained without it, starting as a no-op."),
    init: Optional[Path] = typer.Option(None, "--init", help="SCR only: start from the weights of this model file "
                                                            "(same CT and U-Net size; ignored when resuming)."),
    beta: float = typer.Option(0.0, min=0, max=1, help="beta-NLL exponent of the SCR likelihood (0 = seed 002's loss; "
                                         "0.5 trains faster on a CPU budget)."),
    zoom_aug: float = typer.Option(1.0, "--zoom-aug", min=1, help="SCR only: zoom half of the training images in by a "
                                                           "random factor up to this (exact for scene coordinates: a "
                                                           "longer focal length; teaches the magnification); 1 = off."),
    layout_weight: float = typer.Option(0.0, min=0, help="SCR only: weight of the in-plane scale term of the loss (1 unit = "
                                                  "a 1 percent scale error of the image's predicted scene "
                                                  "coordinates, which PnP turns into depth; 0 = off)."),
    along_ray_weight: float = typer.Option(1.0, min=0, help="SCR only: weight of the coordinate error along each pixel's "
                                                     "ray in the likelihood (PnP sees only the part across the "
                                                     "ray; 1 = seed 002's loss, 0 = reprojection error only)."),
    val_fraction: float = typer.Option(0.05, min=0, max=0.5, help="Share of the dataset held out for validation."),
    val_images: int = typer.Option(96, min=0, help="Validation images that get a full PnP per epoch."),
    threads: Optional[int] = typer.Option(None, min=1, help="torch threads (default: leave as is)."),
    workers: int = typer.Option(0, min=0, help="Data loader worker processes."),
    device: str = typer.Option("auto", help="auto | cpu | cuda."),
    time_limit_min: Optional[float] = typer.Option(None, callback=positive, help="Stop cleanly after this many minutes."),
    seed: int = typer.Option(0, help="Seed of the split, the weights and the sampling."),
    no_augment: bool = typer.Option(False, "--no-augment", help="Turn off the seed-002 augmentation."),
    resume: bool = typer.Option(True, help="Continue from out/checkpoints/last.pt when it exists."),
    allow_incomplete: bool = typer.Option(False, "--allow-incomplete",
                                          help="Train on the complete shards of a dataset still being simulated."),
) -> None:
    """Train a patient-specific model on simulated X-rays of one CT.

    SCR writes OUT/scr.pt (+ scr.json); the baselines OUT/posenet.pt or
    OUT/landmarks.pt. Use the model with `xrecon register --ct CT --model
    OUT/scr.pt image.png`. For GPUs: `torchrun --nproc_per_node=N -m
    xrecon.cli.main train scr ...` (same code, DDP).
    """
    import sys

    check_output_folder(out)
    from xrecon.methods.scr.data import TrainingSetup, prepare_training
    from xrecon.train import TrainConfig

    from xrecon.methods.scr.data import POSE_FIELDS, SCR_FIELDS

    setup: TrainingSetup = prepare_training(
        ct_path=ct, labels_path=labels, structures=structures, data_dir=data, val_fraction=val_fraction,
        seed=seed, augment=not no_augment, landmark_structures=landmarks if method == "landmarks" else None,
        fields=SCR_FIELDS if method == "scr" else POSE_FIELDS, allow_incomplete=allow_incomplete)
    cfg = TrainConfig(out_dir=str(out), epochs=epochs, batch_size=batch_size, lr=lr, schedule=schedule,
                      seed=seed, num_workers=workers, num_threads=threads, device=device,
                      time_limit_min=time_limit_min, resume=resume,
                      warmup_steps=min(100, max(1, len(setup.train_set) // batch_size)))
    run_info = {"command": " ".join(["xrecon"] + sys.argv[1:]), "data": str(data), **setup.describe()}
    if method == "scr":
        from xrecon.methods.scr.train import SCRNetConfig, train_scr

        path, result = train_scr(
            setup.train_set, setup.val_set, normalizer=setup.normalizer, camera=setup.camera,
            targets_world=setup.targets_world, target_names=setup.target_names, train_config=cfg,
            net_config=SCRNetConfig(base_channels=base_channels, levels=levels, input_stride=input_stride,
                                    fine_channels=fine_channels, beta=beta, val_max_images=val_images,
                                    max_zoom=zoom_aug, layout_weight=layout_weight,
                                    along_ray_weight=along_ray_weight),
            ct_info=setup.ct_info, run_info=run_info, init=init)
    elif method in ("posenet", "landmarks"):
        from xrecon.methods.baselines.train import train_baseline

        path, result = train_baseline(
            method, setup.train_set, setup.val_set, init_args=setup.baseline_init_args(method, base_channels, levels, input_stride),
            camera=setup.camera, targets_world=setup.targets_world, train_config=cfg, val_max_images=val_images,
            run_info=run_info)
    else:
        from xrecon.errors import InputError

        raise InputError(f"unknown --method {method!r}; choose scr, posenet or landmarks")
    last = result.history[-1] if result.history else {}
    typer.echo(f"model: {path}")
    if last.get("val_metrics"):
        typer.echo("last epoch validation: " + ", ".join(f"{k} {v:.3g}" for k, v in last["val_metrics"].items()))
    typer.echo(f"curves: {Path(out) / 'curves.png'}; history: {Path(out) / 'history.json'}")
