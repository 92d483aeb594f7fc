"""Shape models in one minute: load the bundled pelvis, fit it to a partial 3D scan and to
two X-ray silhouettes of a subject it was not built from, and save the results.

    python examples/ssm_quickstart.py [--out out/ssm_example]

Everything is simulated from the bundled data (no download). The same fits from the
command line::

    xrecon ssm info pelvis
    xrecon ssm fit pelvis out/ssm_example/scan.npy --out out/ssm_example/fit3d
    xrecon ssm fit pelvis out/ssm_example/ap.png out/ssm_example/lat.png \
        --camera out/ssm_example/ap.json --camera out/ssm_example/lat.json --out out/ssm_example/fit2d
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from shape_models import bundled  # noqa: E402
from shape_models.fit2d import fit_contours  # noqa: E402
from shape_models.fit3d import fit_points  # noqa: E402
from shape_models.procrustes import apply_transform  # noqa: E402
from shape_models.synthetic import biplanar_cameras, partial_point_cloud, render_silhouette  # noqa: E402
from xrecon.metrics.shape import assd  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("out/ssm_example"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    model = bundled.load_model("pelvis")
    print(model)
    print("frame:", model.metadata_["frame"])
    shapes, ids = bundled.subject_shapes(model, "test")  # subjects the model was not built from
    truth = shapes[0]
    print(f"test subject {ids[0]}: mean shape is {assd((model.mean_, model.faces_), (truth, model.faces_)):.2f} mm "
          "ASSD away")

    # 1. a partial scan: half the surface, 1 mm noise, 10 % outliers, unknown frame
    obs = partial_point_cloud(truth, model.faces_, n_points=4000, seed=0)
    np.save(args.out / "scan.npy", obs.points)
    t0 = time.perf_counter()
    fit = fit_points(model, obs.points)
    err = assd((fit.vertices, model.faces_), (apply_transform(obs.model_to_obs, truth), model.faces_))
    print(f"3D fit: success={fit.success}, ASSD {err:.2f} mm, inlier RMS {fit.rms_inlier_mm:.2f} mm, "
          f"|b| = {fit.mahalanobis:.1f} SD, {time.perf_counter() - t0:.1f} s")

    # 2. biplanar silhouettes (AP + lateral) with known cameras and pose
    cams = biplanar_cameras(model.mean_.mean(axis=0), size_px=384, pixel_spacing_mm=1.07)
    masks = [render_silhouette(truth, model.faces_, cams, v) for v in range(2)]
    for name, mask, v in zip(("ap", "lat"), masks, range(2)):
        Image.fromarray((mask * 255).astype(np.uint8)).save(args.out / f"{name}.png")
        cams.save(args.out / f"{name}.json", i=v)
    t0 = time.perf_counter()
    fit2 = fit_contours(model, masks, cams)
    err2 = assd((fit2.vertices, model.faces_), (truth, model.faces_))
    print(f"biplanar fit: success={fit2.success}, ASSD {err2:.2f} mm, contour RMS {np.round(fit2.rms_px, 2)} px, "
          f"{time.perf_counter() - t0:.1f} s")
    fit1 = fit_contours(model, masks[:1], cams[[0]])
    err1 = assd((fit1.vertices, model.faces_), (truth, model.faces_))
    print(f"single-view (AP) fit: ASSD {err1:.2f} mm")
    print(f"inputs written to {args.out}/ (scan.npy, ap.png, lat.png, ap.json, lat.json)")


if __name__ == "__main__":
    main()
