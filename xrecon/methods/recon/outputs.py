"""Files written by ``xrecon reconstruct`` and ``xrecon register``.

Everything goes first into a hidden staging folder inside the output folder
and is moved into place only when every file has been written, so a failed
run leaves no partial outputs (:func:`staged_output`).

``reconstruct`` writes:
    ``reconstruction_cam.ply`` / ``.stl``  the posed mesh, camera frame, mm
                        (each with a ``.json`` sidecar naming the frame);
    ``points.csv``      N points of the reconstruction: vertex id, camera-frame
                        and model-frame xyz (mm), image (u, v) (px), confidence;
    ``points_cam.ply``  the same points as a PLY point cloud (camera frame) with
                        per-point properties ``uv_0, uv_1`` (px), ``confidence``,
                        ``vertex_id``;
    ``pose.json``       ``{"from_frame": model, "to_frame": camera, "matrix":
                        model_to_cam}`` plus the camera, shape coefficients,
                        confidence and notes (:func:`xrecon.anatomy.mesh_io.write_pose`);
    ``overlay.png``     the reconstruction's outline (green) and the PnP inlier
                        pixels (cyan) over the X-ray.
``register`` writes:
    ``registration.json``  ``{"from_frame": ct, "to_frame": camera, "matrix":
                        final ct_to_cam}`` plus ``ct_to_cam`` before and
                        ``ct_to_cam_refined`` after refinement, confidence and
                        the diagnostics of every stage;
    ``ct_bone_cam.ply``  the CT's bone surface posed in the camera (final pose);
    ``overlay.png``     the CT bone outline over the X-ray: yellow before
                        refinement, green after (green only without --refine).
Overlays are at most ``OVERLAY_MAX_SIDE`` (1024) px on their longest side
(:mod:`xrecon.methods.recon.overlay`).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from xrecon.errors import InputError
from xrecon.methods.recon.overlay import CYAN, GREEN, OVERLAY_MAX_SIDE, YELLOW, draw_overlay, save_png, silhouette

CAMERA_FRAME = ("camera: OpenCV pinhole, X-ray source at the origin, +z toward the detector, +x image right, "
                "+y image down, mm")


@contextlib.contextmanager
def staged_output(out_dir: str | Path):
    """Yield a staging folder; on success move its files into ``out_dir``, on failure delete it."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".xrecon-staging-", dir=out))
    except OSError as exc:
        raise InputError(f"cannot write the output folder ({exc.strerror or exc})", out) from exc
    try:
        yield stage
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _write_mesh(path: Path, vertices: np.ndarray, faces: np.ndarray, frame: str, source: str) -> None:
    from xrecon.anatomy.bone import BoneModel
    from xrecon.anatomy.mesh_io import write_mesh

    write_mesh(path, BoneModel(vertices, faces, frame=frame, source=source))


def _camera_dict(camera) -> dict:
    d = camera.to_dict(0, frame="none (intrinsics only; the poses below map named frames to this camera)")
    d.pop("world_to_cam", None)
    return d


MODEL_FRAME = ("shape model frame (bundled pelvis: articulated-ssm anatomical frame, origin midway between the "
               "ASIS, +x anterior, +y superior, +z right), mm")


def reconstruction_json(rec, space_name: str, model_info: dict | None = None) -> dict:
    """The extra keys of ``pose.json`` for a :class:`~xrecon.methods.recon.pipeline.Reconstruction`."""
    return {
        "camera": _camera_dict(rec.camera),
        "shape_model": space_name,
        "shape_sd": rec.shape_sd,
        "shape_sd_network": rec.shape_sd_network,
        "scale_prior": ("absolute size comes from the shape model's size mode as inferred by the network under the "
                        "training pose distribution (source-to-isocentre 765 mm, depth offset std 30 mm): a single "
                        "view cannot separate size from depth"),
        **rec.summary(),
        "model": model_info or {},
    }


def write_reconstruction(out_dir: str | Path, rec, image: np.ndarray, space_name: str,
                         model_info: dict | None = None, xray: dict | None = None) -> list[Path]:
    """Write the ``reconstruct`` outputs (see module docstring); returns the final paths.
    ``xray``: what reading the X-ray found and assumed
    (:meth:`~xrecon.anatomy.xray_io.XrayReading.to_dict`), written as ``pose.json``'s ``xray``."""
    if not rec.success:
        raise InputError(f"no reconstruction: {rec.reason}")
    with staged_output(out_dir) as stage:
        from xrecon.anatomy.mesh_io import write_points, write_pose

        v_cam = rec.vertices_cam
        src = f"xrecon reconstruct ({space_name} shape model)"
        _write_mesh(stage / "reconstruction_cam.ply", v_cam, rec.faces, CAMERA_FRAME, src)
        _write_mesh(stage / "reconstruction_cam.stl", v_cam, rec.faces, CAMERA_FRAME, src)
        pc, pm = rec.points_cam, rec.points_model
        table = np.column_stack([rec.point_ids, pc, pm, rec.points_uv, rec.points_confidence])
        header = "vertex_id,x_cam_mm,y_cam_mm,z_cam_mm,x_model_mm,y_model_mm,z_model_mm,u_px,v_px,confidence"
        np.savetxt(stage / "points.csv", table, delimiter=",", header=header, comments="",
                   fmt=["%d"] + ["%.3f"] * 8 + ["%.3f"])
        write_points(stage / "points_cam.ply", pc, {"uv": rec.points_uv, "confidence": rec.points_confidence,
                                                    "vertex_id": rec.point_ids.astype(np.int32)}, frame=CAMERA_FRAME)
        write_pose(stage / "pose.json", rec.model_to_cam, MODEL_FRAME, CAMERA_FRAME,
                   **reconstruction_json(rec, space_name, model_info), **({"xray": xray} if xray else {}))
        mask = silhouette(v_cam, rec.faces, rec.camera.with_pose(np.eye(4)), max_side=OVERLAY_MAX_SIDE)
        rgb = draw_overlay(image, [(mask, GREEN)], [(rec.corr_uv[rec.inliers], CYAN)])
        save_png(rgb, stage / "overlay.png")
        names = [f.name for f in stage.iterdir()]
    return [Path(out_dir) / n for n in sorted(names)]


def ct_frame(result) -> str:
    return (f"the CT's world frame as read, RAS+ mm ({result.ct_source or result.bone.source}); files stored LPS "
            "are converted on reading: for LPS coordinates use matrix @ diag(-1, -1, 1, 1)")


def registration_json(result, model_info: dict | None = None) -> dict:
    """The extra keys of ``registration.json`` for an :class:`xrecon.api.Registration`."""
    rec, reg = result.reconstruction, result.registration
    confident = bool(reg.confident and (result.ct_to_cam_refined is not None or not result.refine_info))
    return {
        "matrix_is": "ct_to_cam_refined" if result.ct_to_cam_refined is not None else "ct_to_cam",
        "ct_to_cam": result.ct_to_cam,
        "ct_to_cam_refined": result.ct_to_cam_refined,
        "camera": _camera_dict(result.camera),
        "ct_bone": result.bone.source,
        "success": bool(reg.success),
        "confident": confident,
        "notes": list(reg.notes) + ([f"refinement: {result.refine_info.get('reason')}"]
                                    if result.refine_info and not result.refine_info.get("success") else []),
        "registration": reg.summary(),
        "refinement": result.refine_info,
        "reconstruction": rec.summary(),
        "model_to_cam": rec.model_to_cam,
        "model": model_info or {},
    }


def write_registration(out_dir: str | Path, result, model_info: dict | None = None) -> list[Path]:
    """Write the ``register`` outputs (see module docstring); returns the final paths."""
    if not result.success:
        raise InputError(f"registration failed: {result.registration.reason}")
    bone = result.bone
    cam0 = result.camera.with_pose(np.eye(4))

    def posed(T):
        return bone.vertices @ T[:3, :3].T + T[:3, 3]

    with staged_output(out_dir) as stage:
        from xrecon.anatomy.mesh_io import write_pose

        write_pose(stage / "registration.json", result.final_ct_to_cam, ct_frame(result), CAMERA_FRAME,
                   **registration_json(result, model_info))
        _write_mesh(stage / "ct_bone_cam.ply", posed(result.final_ct_to_cam), bone.faces, CAMERA_FRAME,
                    f"CT bone surface of {bone.source}")
        masks = []
        if result.ct_to_cam_refined is not None:
            masks.append((silhouette(posed(result.ct_to_cam), bone.faces, cam0, max_side=OVERLAY_MAX_SIDE), YELLOW))
        masks.append((silhouette(posed(result.final_ct_to_cam), bone.faces, cam0, max_side=OVERLAY_MAX_SIDE), GREEN))
        save_png(draw_overlay(result.image, masks), stage / "overlay.png")
        names = [f.name for f in stage.iterdir()]
    return [Path(out_dir) / n for n in sorted(names)]


def write_scr_registration(out_dir: str | Path, result, image: np.ndarray, camera, bone,
                           ct_source: str | None = None) -> list[Path]:
    """The ``register`` outputs for a patient-specific SCR result
    (:class:`xrecon.methods.scr.predict.SCRRegistration`): same files as
    :func:`write_registration`; ``ct_source`` names the CT (default: the bone's source)."""
    from xrecon.anatomy.mesh_io import write_pose

    if not result.success:
        raise InputError(f"registration failed: {result.reason}")
    T = np.asarray(result.world_to_cam, np.float64)
    posed = bone.vertices @ T[:3, :3].T + T[:3, 3]
    cam0 = camera[0].with_pose(np.eye(4))
    with staged_output(out_dir) as stage:
        write_pose(stage / "registration.json", T, f"the CT's world frame as read, RAS+ mm ({ct_source or bone.source})",
                   CAMERA_FRAME, ct_bone=bone.source,
                   **{k: v for k, v in result.to_dict().items() if k != "world_to_cam"})
        _write_mesh(stage / "ct_bone_cam.ply", posed, bone.faces, CAMERA_FRAME, f"CT bone surface of {bone.source}")
        save_png(draw_overlay(image, [(silhouette(posed, bone.faces, cam0, max_side=OVERLAY_MAX_SIDE), GREEN)]),
                 stage / "overlay.png")
        names = [f.name for f in stage.iterdir()]
    return [Path(out_dir) / n for n in sorted(names)]
