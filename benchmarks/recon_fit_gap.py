"""The reconstruction network on its own training images against validation (issue 6).

Evaluates a model's validation metrics (the training loop's, from
:meth:`xrecon.methods.recon.loss.ReconLoss.metrics`: canonical-coordinate error,
its part across the ray, in-plane scale error of the predicted coordinates,
size and shape errors, mask IoU) on the first images of every part of a
training data folder, *without* augmentation, and on the validation file.
Metrics far better on the training parts than on validation mean the network
learnt those subjects rather than the task; metrics alike on both mean that
more of the same data will not help. Each file's row also says how many
subjects it holds (train-split subjects and random draws from the shape
model), since one subject's images are seen in every epoch.

    python benchmarks/recon_fit_gap.py --data runs/recon_cpu/data --threads 2 --name recon_fit_gap

writes ``benchmarks/results/<name>.{json,md}``. The data folder is the
training data of the model (the commands that simulate it are in
``xrecon/weights/recon_default.json``, ``note``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _registration_data import machine, today, write_results  # noqa: E402

#: (metric key of ReconLoss.metrics, column label, format)
COLUMNS = (("coord_mm", "canonical error (mm)", ".2f"), ("coord_across_mm", "across the ray (mm)", ".2f"),
           ("scale_error_pct", "in-plane scale error (%)", ".2f"), ("size_sd_abs", "size error (SD)", ".3f"),
           ("shape_mm", "shape error (mm)", ".2f"), ("mask_iou", "mask IoU", ".3f"))


def bone_rows(path: Path, max_images: int | None) -> tuple[np.ndarray, dict]:
    """The first ``max_images`` rows of ``path`` whose image shows bone, and the
    facts of the whole file (``images``, ``bone_images``, ``subjects``: distinct
    train-split subjects, ``random_shapes``: shapes drawn from the model)."""
    import json

    import h5py

    with h5py.File(path, "r") as h5:
        cfg = json.loads(h5.attrs["config"]) if "config" in h5.attrs else {}
        n = len(h5["image"])
        has = h5["has_bone"][:].astype(bool) if "has_bone" in h5 else np.ones(n, bool)
        subject = h5["subject"][:] if "subject" in h5 else np.full(n, -2)
    rows = np.flatnonzero(has)
    if max_images is not None:
        rows = rows[:max_images]
    real = subject[has]
    facts = {"images": int(n), "bone_images": int(has.sum()), "subjects": int(len(np.unique(real[real >= 0]))),
             "random_shapes": int(cfg.get("n_random_shapes", 0)) if has.any() else 0}
    return rows, facts


def network_metrics(net, loss, path: Path, rows: np.ndarray, batch_size: int = 32) -> dict[str, float]:
    """Mean of ``loss.metrics`` over ``rows`` of the dataset file ``path`` (no augmentation)."""
    import torch

    from xrecon.methods.recon.data import ReconH5Dataset

    ds = ReconH5Dataset(path, indices=rows)
    sums: dict[str, list] = {}
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            items = [ds[i] for i in range(start, min(len(ds), start + batch_size))]
            batch = {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}
            for k, v in loss.metrics(net, batch).items():
                sums.setdefault(k, []).append(v.float())
    return {k: float(torch.cat(v).mean()) for k, v in sums.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="folder of train*.h5 and val.h5")
    ap.add_argument("--model", type=Path, default=None, help="model file (default: the shipped weights)")
    ap.add_argument("--max-images", type=int, default=300, help="bone images evaluated per training file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--name", default="recon_fit_gap", help="results file name")
    args = ap.parse_args(argv)

    import torch

    from xrecon.methods.recon.loss import ReconLoss
    from xrecon.methods.recon.model_io import load_recon_model

    torch.set_num_threads(args.threads)
    train_files = sorted(args.data.glob("train*.h5"))
    val_file = args.data / "val.h5"
    if not train_files or not val_file.exists():
        raise SystemExit(f"recon_fit_gap: error: {args.data}: needs train*.h5 and val.h5 (simulated training data)")
    net, space, info = load_recon_model(args.model)
    net.eval()
    loss = ReconLoss.for_network(space, net.config.coord_scale_mm)  # the training's loss and metrics
    results = {}
    for path in [*train_files, val_file]:
        cap = None if path == val_file else args.max_images
        rows, facts = bone_rows(path, cap)
        if len(rows) == 0:  # negatives only: no coordinates to measure
            results[path.name] = {**facts, "evaluated": 0}
            continue
        results[path.name] = {**facts, "evaluated": int(len(rows)),
                              **network_metrics(net, loss, path, rows)}
        print(path.name, {k: round(v, 3) for k, v in results[path.name].items() if isinstance(v, float)}, flush=True)
    command = "python benchmarks/recon_fit_gap.py " + " ".join(sys.argv[1:] if argv is None else argv)
    payload = {"date": today(), "machine": machine(), "model": str(args.model or "xrecon/weights/recon_default.pt"),
               "model_command": info.get("command"), "data": str(args.data), "files": results, "command": command}
    lines = [f"# {args.name}: the reconstruction network on training images and on validation", "",
             f"Date {payload['date']}; {payload['machine']}. Model `{payload['model']}` (trained by "
             f"`{payload['model_command']}`); data `{args.data}`.",
             f"Command: `{command}`.", "",
             "Training files: their first bone images, without augmentation; validation: all of it. "
             "Subjects: distinct train-split (or validation-split) subjects; random shapes: shapes drawn from the model.",
             "", "| file | evaluated | subjects | random shapes | "
             + " | ".join(label for _, label, _ in COLUMNS) + " |",
             "|---|---|---|---|" + "---|" * len(COLUMNS)]
    for name, r in results.items():
        cells = [format(r[k], f) if k in r else "-" for k, _, f in COLUMNS]
        lines.append(f"| {name} | {r['evaluated']} | {r['subjects']} | {r['random_shapes']} | "
                     + " | ".join(cells) + " |")
    j, m = write_results(args.name, payload, "\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {j} and {m}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
