"""``xrecon ssm``: build, inspect and fit statistical shape models (the shape_models package).

Thin layer: parse, call one shape_models function, print. Heavy imports live
inside the commands so ``xrecon --help`` stays instant.
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from xrecon.cli.common import check_output_folder, handle_errors, positive

app = typer.Typer(help="Statistical shape models: build from meshes, inspect, fit to 3D points or X-ray masks.",
                  no_args_is_help=True, add_completion=False, rich_markup_mode=None)

MESH_SUFFIXES = (".ply", ".stl", ".obj", ".off")
#: fewer points than this cannot pin a similarity pose plus shape modes
MIN_FIT_POINTS = 10
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def _load_model(model: str):
    """A model file, or the name of a bundled model (``pelvis``, ``femur``)."""
    from shape_models import ShapeModel, bundled

    if model in bundled.READY_MODELS and not Path(model).exists():
        return bundled.load_model(model)
    return ShapeModel.load(model)


@app.command()
@handle_errors
def build(
    mesh_dir: Path = typer.Argument(..., help="Folder of meshes (.ply .stl .obj .off), one bone each."),
    out: Path = typer.Option(..., "--out", "-o", help="Model file to write (.npz)."),
    n_components: float = typer.Option(0.98, callback=positive, help="Modes: an integer count, or a variance fraction in (0, 1]."),
    procrustes: str = typer.Option("similarity", help="Alignment: similarity, rigid or none."),
    template: Optional[Path] = typer.Option(None, help="Template mesh (default: the mesh with the median vertex count)."),
    in_correspondence: bool = typer.Option(False, help="Meshes already share vertices and faces: skip registration."),
) -> None:
    """Build a shape model from a folder of meshes (registered to a template unless already in correspondence)."""
    import numpy as np

    from shape_models import ShapeModel
    from shape_models.correspond import build_model_from_meshes, load_mesh
    from xrecon.errors import InputError

    if not mesh_dir.is_dir():
        raise InputError("not a folder of meshes", mesh_dir)
    paths = sorted(p for p in mesh_dir.iterdir() if p.suffix.lower() in MESH_SUFFIXES)
    if len(paths) < 2:
        raise InputError(f"found {len(paths)} meshes ({', '.join(MESH_SUFFIXES)}); at least 2 are needed", mesh_dir)
    meshes = [load_mesh(p) for p in paths]
    nc = int(n_components) if n_components >= 1 else float(n_components)
    mode = None if procrustes.lower() == "none" else procrustes.lower()
    meta = {"source": f"xrecon ssm build {mesh_dir}", "meshes": [p.name for p in paths]}
    if in_correspondence:
        counts = {len(v) for v, _ in meshes}
        if len(counts) != 1:
            raise InputError(f"--in-correspondence but the meshes have different vertex counts {sorted(counts)}",
                             mesh_dir)
        model = ShapeModel(n_components=nc, procrustes=mode).fit(np.stack([v for v, _ in meshes]), meshes[0][1],
                                                                 metadata=meta)
        results = []
    else:
        tmpl = load_mesh(template) if template is not None else None
        model, results = build_model_from_meshes(meshes, tmpl, nc, mode, sources=[p.name for p in paths],
                                                 metadata=meta)
    model.save(out)
    for r in results:
        typer.echo(f"{r.source}: registration residual ASSD {r.assd_mm:.3f} mm, HD95 {r.hd95_mm:.3f} mm"
                   f"{'' if r.success else '  WARNING: ' + r.reason}")
    typer.echo(f"wrote {out}: {model!r}")


@app.command()
@handle_errors
def info(model: str = typer.Argument(..., help="Model file (.npz) or bundled name (pelvis, femur).")) -> None:
    """Print what a model file holds."""
    m = _load_model(model)
    meta = m.metadata_
    typer.echo(repr(m))
    typer.echo(f"vertices {m.n_vertices_}, faces {0 if m.faces_ is None else len(m.faces_)}, "
               f"modes {m.n_components_}, procrustes {m.procrustes}")
    typer.echo(f"units {meta.get('units')}; frame: {meta.get('frame')}")
    typer.echo(f"source: {meta.get('source')}")
    cum = 0.0
    for k, (var, ratio) in enumerate(zip(m.explained_variance_, m.explained_variance_ratio_), start=1):
        cum += ratio
        typer.echo(f"  mode {k:2d}: SD {var ** 0.5:9.2f} mm (norm over all vertices), {100 * ratio:6.2f} % "
                   f"(cumulative {100 * cum:6.2f} %)")
    if m.landmark_names_:
        typer.echo("landmarks: " + ", ".join(f"{n} (vertex {i})" for n, i in zip(m.landmark_names_,
                                                                                  m.landmark_vertex_ids_.tolist())))
    if "split" in meta:
        s = meta["split"]
        typer.echo(f"subject split (seed {s.get('seed')}): train {len(s['train'])}, val {len(s['val'])}, "
                   f"test {len(s['test'])}")
    typer.echo(f"training scores stored: {len(m.training_scores_)}; extra arrays: {sorted(m.extra_arrays_)}")


def _read_points(path: Path):
    import numpy as np

    from xrecon.errors import InputError

    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            pts = np.load(path)
        elif suffix in (".txt", ".xyz", ".csv"):
            pts = np.loadtxt(path, delimiter="," if suffix == ".csv" else None)
        else:
            import trimesh

            pts = np.asarray(trimesh.load(path, process=False).vertices)
    except Exception as exc:  # numpy / trimesh raise many types on unreadable files
        raise InputError(f"cannot read points ({exc})", path) from exc
    return np.asarray(pts, dtype=np.float64)


def _read_mask(path: Path):
    import numpy as np
    from PIL import Image

    from xrecon.errors import InputError

    try:
        img = np.asarray(Image.open(path))
    except OSError as exc:
        raise InputError(f"cannot read image ({exc})", path) from exc
    if img.ndim == 3:
        img = img[..., :3].max(axis=-1)
    return img > 0


@app.command()
@handle_errors
def fit(
    model: str = typer.Argument(..., help="Model file (.npz) or bundled name (pelvis, femur)."),
    inputs: List[Path] = typer.Argument(..., help="A point cloud (.ply .npy .txt .xyz), or one mask image per view."),
    camera: List[Path] = typer.Option([], "--camera", help="Camera JSON per mask image (xrecon Camera.save format)."),
    init_pose: Optional[Path] = typer.Option(None, help="JSON 4x4 model_to_world (2D fits; default identity)."),
    estimate_pose: bool = typer.Option(False, help="2D fits: also refine the pose from --init-pose."),
    prior_weight: float = typer.Option(1.0, min=0, help="Weight of the Mahalanobis prior |b|^2."),
    out: Path = typer.Option(Path("ssm_fit"), "--out", "-o", help="Output stem: writes STEM.ply and STEM.json."),
) -> None:
    """Fit a model to a 3D point cloud (any frame) or to bone masks in one or more X-ray views."""
    import json

    import numpy as np

    from xrecon.errors import InputError
    from xrecon.io import atomic_path, atomic_write_json

    check_output_folder(out.parent)
    m = _load_model(model)
    images = [p for p in inputs if p.suffix.lower() in IMAGE_SUFFIXES]
    if images:
        if len(images) != len(inputs):
            raise InputError("mix of images and point clouds: give either masks (with --camera) or one point cloud")
        if len(camera) != len(images):
            raise InputError(f"{len(images)} mask images but {len(camera)} --camera files; give one per view")
        from shape_models.fit2d import Fit2DConfig, fit_contours  # heavy imports once the arguments are checked
        from xrecon.geometry.camera import Camera

        cams = [Camera.load(c) for c in camera]
        cam = cams[0]
        if len(cams) > 1:
            import torch

            cam = Camera(torch.cat([c.K for c in cams]), torch.cat([c.world_to_cam for c in cams]), cams[0].height,
                         cams[0].width, cams[0].pixel_spacing_mm)
        masks = [_read_mask(p) for p in images]
        for p, mk, c in zip(images, masks, cams):
            if mk.shape != (c.height, c.width):
                raise InputError(f"mask is {mk.shape} but its camera is {c.height} x {c.width}", p)
        pose = np.eye(4)
        if init_pose is not None:
            try:
                pose = np.asarray(json.loads(init_pose.read_text()), dtype=np.float64).reshape(4, 4)
            except (OSError, ValueError) as exc:
                raise InputError(f"not a 4x4 JSON matrix ({exc})", init_pose) from exc
        res = fit_contours(m, masks, cam, pose, Fit2DConfig(estimate_pose=estimate_pose, prior_weight=prior_weight))
        report = {"kind": "2D contours", "views": [str(p) for p in images], "success": res.success,
                  "reason": res.reason, "coefficients_sd": res.coefficients.tolist(),
                  "model_to_world": res.model_to_world.tolist(), "contour_rms_px": res.rms_px, "n_iter": res.n_iter,
                  "frame": "world frame of the cameras, mm"}
    else:
        if len(inputs) != 1:
            raise InputError(f"give one point cloud, got {len(inputs)} files")
        pts = _read_points(inputs[0])
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise InputError(f"points must be an (N, 3) array, got shape {pts.shape}", inputs[0])
        if len(pts) < MIN_FIT_POINTS:
            raise InputError(f"{len(pts)} points: a shape fit needs at least {MIN_FIT_POINTS}", inputs[0])
        if not np.isfinite(pts).all():
            raise InputError("points hold NaN or inf", inputs[0])
        from shape_models.fit3d import Fit3DConfig, fit_points

        res = fit_points(m, pts, Fit3DConfig(prior_weight=prior_weight))
        report = {"kind": "3D points", "points": str(inputs[0]), "success": res.success, "reason": res.reason,
                  "coefficients_sd": res.coefficients.tolist(), "model_to_points": res.model_to_points.tolist(),
                  "scale": res.scale, "rms_inlier_mm": res.rms_inlier_mm,
                  "inlier_fraction": float(res.inliers.mean()), "mahalanobis_sd": res.mahalanobis,
                  "frame": "frame of the input points, mm"}
    report["model"] = model
    source = inputs[0] if len(inputs) == 1 else None
    if not res.success:  # a failed fit writes nothing
        raise InputError(f"the fit failed: {res.reason}", source)
    if not np.isfinite(res.vertices).all():
        raise InputError("the fit failed: it produced non-finite vertices", source)
    import trimesh

    mesh_path = out.with_suffix(".ply")
    with atomic_path(mesh_path) as tmp:
        trimesh.Trimesh(res.vertices, res.faces, process=False).export(tmp)
    atomic_write_json(out.with_suffix(".json"), report, indent=1)
    typer.echo(f"ok; wrote {mesh_path} and {out.with_suffix('.json')}")
