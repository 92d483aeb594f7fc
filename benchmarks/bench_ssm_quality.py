"""Benchmark: compactness, generalisation and specificity curves of the shape models.

Models: the bundled pelvis and femur (articulated-ssm, PCA of the 260 train
subjects) and the LLP26 femur and pelvis (26 real subjects, node clouds).
Generalisation: leave-one-out ASSD (meshes) or mean node distance (LLP26), mm,
as a function of the number of modes; for the bundled models the left-out
subjects are the 32 test subjects, each left out of a model of all other 323.
Specificity: 200 samples of the k-mode model vs the closest training shape
(mean vertex distance, mm). Writes a plot (bench_ssm_quality.png).

Caveat: the articulated-ssm subjects are rebuilt from a published 10-mode
model, so they lie in a 10-D subspace (plus the rigid re-alignment) and
generalisation with 10 modes is near zero by construction; LLP26 shows the
behaviour of a model of real, independent subjects.

    python benchmarks/bench_ssm_quality.py [--quick]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from shape_models import bundled  # noqa: E402
from shape_models.quality import compactness, generalisation, specificity  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="4 left-out subjects, 50 specificity samples")
    args = ap.parse_args()
    n_left, n_spec = (4, 50) if args.quick else (32, 200)
    curves = {}
    for name in ("pelvis", "femur"):
        model = bundled.load_model(name)
        side, bones, _ = bundled.READY_MODELS[name]
        # the rebuilt subjects themselves (rigidly aligned), not their projections on the model
        all_shapes = model.align(bundled.coupled_instances(side, bones)[0])[0]
        split = model.metadata_["split"]
        ks = list(range(1, model.n_components_ + 1))
        gen = generalisation(all_shapes, ks, model.faces_, model.procrustes, left_out=split["test"][:n_left])
        spec = specificity(model, all_shapes[split["train"]], ks, n_samples=n_spec)
        curves[f"{name} (articulated-ssm)"] = {"ks": ks, "compactness": compactness(model).tolist(),
                                               "generalisation_mm": gen.mean(axis=1).tolist(),
                                               "generalisation_sd_mm": gen.std(axis=1).tolist(),
                                               "specificity_mm": spec.mean(axis=1).tolist(), "metric": "ASSD"}
        print(name, "done", flush=True)
    for bone in ("femur", "pelvis"):
        model = bundled.load_llp26(bone)
        shapes = model.inverse_transform(model.training_scores_)
        ks = list(range(1, 25))
        gen = generalisation(shapes, ks, None, None)
        spec = specificity(model, shapes, ks, n_samples=n_spec)
        curves[f"LLP26 {bone}"] = {"ks": ks, "compactness": compactness(model)[:24].tolist(),
                                   "generalisation_mm": gen.mean(axis=1).tolist(),
                                   "generalisation_sd_mm": gen.std(axis=1).tolist(),
                                   "specificity_mm": spec.mean(axis=1).tolist(), "metric": "mean node distance"}
        print("LLP26", bone, "done", flush=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for label, c in curves.items():
        axes[0].plot(c["ks"], c["compactness"], marker=".", label=label)
        axes[1].plot(c["ks"], c["generalisation_mm"], marker=".", label=label)
        axes[2].plot(c["ks"], c["specificity_mm"], marker=".", label=label)
    axes[0].set(title="compactness", xlabel="modes", ylabel="cumulative variance share")
    axes[1].set(title="generalisation (leave-one-out)", xlabel="modes", ylabel="mm", yscale="log")
    axes[2].set(title="specificity", xlabel="modes", ylabel="mm")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    RESULTS.mkdir(exist_ok=True)
    fig.savefig(RESULTS / "bench_ssm_quality.png", dpi=110)

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = {"date": date, "machine": "2-core CPU, no GPU", "quick": args.quick,
            "data": "bundled articulated-ssm pelvis / femur models and LLP26 (musculoskeletal-models 0.2.4)",
            "command": "python benchmarks/bench_ssm_quality.py" + (" --quick" if args.quick else "")}
    (RESULTS / "bench_ssm_quality.json").write_text(json.dumps({"meta": meta, "curves": curves}, indent=1))
    lines = ["# Shape model quality (bench_ssm_quality)", "", f"{date}; {meta['machine']}; {meta['data']}.",
             f"Command: `{meta['command']}`. Plot: bench_ssm_quality.png", "",
             "| model | metric | modes | compactness | generalisation (mm) | specificity (mm) |",
             "|---|---|---|---|---|---|"]
    for label, c in curves.items():
        for k in [1, 2, 3, 5, 10, 15, 20, 24]:
            if k in c["ks"]:
                i = c["ks"].index(k)
                lines.append(f"| {label} | {c['metric']} | {k} | {c['compactness'][i]:.4f} | "
                             f"{c['generalisation_mm'][i]:.3f} | {c['specificity_mm'][i]:.3f} |")
    (RESULTS / "bench_ssm_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
