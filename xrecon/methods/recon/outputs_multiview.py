"""Files written by ``xrecon reconstruct`` and ``xrecon register`` given several
X-rays whose cameras share one world frame (one X-ray: :mod:`~xrecon.methods.recon.outputs`),
or whose relative poses are unknown (:func:`write_independent_reconstruction`,
:func:`write_independent_registration`: one camera frame per view, no world frame).

Staged like the single-view outputs (:func:`~xrecon.methods.recon.outputs.staged_output`):
a failed run leaves nothing behind.

``reconstruct`` writes:
    ``reconstruction_world.ply`` / ``.stl``  the posed mesh in the cameras' shared
                        world frame, mm (each with a ``.json`` sidecar naming the frame);
    ``points.csv``      N points: vertex id, world and model xyz (mm), then
                        ``u_<i>, v_<i>`` (px) in every view ``i``, confidence;
    ``points_world.ply`` the same points (world frame) with ``confidence`` and ``vertex_id``;
    ``pose.json``       ``{"from_frame": model, "to_frame": world, "matrix": model_to_world}``
                        plus each view's ``model_to_cam``, camera (with its ``world_to_cam``),
                        what each view contributed (used / down-weighted / refused, why),
                        shape coefficients, confidence and notes;
    ``overlay_<i>.png`` view ``i``: the reconstruction's outline (green) and its inlier
                        pixels (cyan; none for a refused view).
``register`` writes:
    ``registration.json``  ``{"from_frame": ct, "to_frame": world, "matrix": ct_to_world}``
                        (the final pose: after refinement with ``--refine``) plus ``ct_to_cam``
                        of every view (``ct_to_cam[i] = world_to_cam_i @ ct_to_world``), the
                        cameras, confidence and diagnostics; with ``--refine`` also
                        ``ct_to_world_before_refinement``, ``refined`` and ``refinement``;
    ``ct_bone_world.ply``  the CT's bone surface posed in the world frame (final pose);
    ``overlay_<i>.png`` the CT bone's outline in view ``i``: green the final pose, yellow
                        before refinement (only when refinement moved it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from xrecon.errors import InputError
from xrecon.methods.recon.outputs import MODEL_FRAME, _write_mesh, ct_frame, staged_output
from xrecon.methods.recon.overlay import CYAN, GREEN, OVERLAY_MAX_SIDE, YELLOW, draw_overlay, save_png, silhouette

WORLD_FRAME = ("world: the X-ray cameras' shared frame (the frame of every camera's world_to_cam; for xrecon's "
               "simulations patient RAS+), mm")
NO_FRAME = "none (the views share no frame: their relative poses are unknown)"
CAMERA_FRAME_I = ("camera of view {i}: OpenCV pinhole, X-ray source at the origin, +z toward the detector, +x image "
                  "right, +y image down, mm")


def _camera_dict(camera, i: int, frame: str = "world (the cameras' shared frame)") -> dict:
    d = camera.to_dict(0, frame=frame)
    d["view"] = i
    if frame == NO_FRAME:
        d.pop("world_to_cam")  # not known: the views share no frame
    return d


def _views(cameras, images_named=None, frame: str = "world (the cameras' shared frame)") -> list[dict]:
    return [{"view": i, "source": (images_named[i] if images_named else None), "camera": _camera_dict(c, i, frame)}
            for i, c in enumerate(cameras)]


def write_multiview_reconstruction(out_dir: str | Path, mrec, images: list[np.ndarray], space_name: str,
                                   model_info: dict | None = None, sources: list[str] | None = None,
                                   world_frame: str = WORLD_FRAME) -> list[Path]:
    """Write the several-view ``reconstruct`` outputs (module docstring); returns the final paths.
    ``sources`` names each view's image file; ``world_frame`` the shared frame
    (:data:`WORLD_FRAME`, or :data:`xrecon.geometry.carm.ISOCENTRE_FRAME` for C-arm angles)."""
    if not mrec.success:
        raise InputError(f"no reconstruction: {mrec.reason}")
    from xrecon.anatomy.mesh_io import write_points, write_pose

    with staged_output(out_dir) as stage:
        v_world = mrec.vertices_world
        src = f"xrecon reconstruct, {mrec.n_views} views ({space_name} shape model)"
        _write_mesh(stage / "reconstruction_world.ply", v_world, mrec.faces, world_frame, src)
        _write_mesh(stage / "reconstruction_world.stl", v_world, mrec.faces, world_frame, src)
        pw, pm = mrec.points_world, mrec.vertices_model[mrec.point_ids]
        uv = np.concatenate([mrec.points_uv[i] for i in range(mrec.n_views)], axis=1)
        table = np.column_stack([mrec.point_ids, pw, pm, uv, mrec.points_confidence])
        header = ",".join(["vertex_id", "x_world_mm", "y_world_mm", "z_world_mm", "x_model_mm", "y_model_mm",
                           "z_model_mm"] + [f"{a}_{i}_px" for i in range(mrec.n_views) for a in ("u", "v")]
                          + ["confidence"])
        np.savetxt(stage / "points.csv", table, delimiter=",", header=header, comments="",
                   fmt=["%d"] + ["%.3f"] * (table.shape[1] - 1))
        write_points(stage / "points_world.ply", pw, {"confidence": mrec.points_confidence,
                                                      "vertex_id": mrec.point_ids.astype(np.int32)},
                     frame=world_frame)
        write_pose(stage / "pose.json", mrec.model_to_world, MODEL_FRAME, world_frame,
                   model_to_cam=[{"view": i, "to_frame": CAMERA_FRAME_I.format(i=i), "matrix": mrec.model_to_cam(i)}
                                 for i in range(mrec.n_views)],
                   cameras=_views(mrec.cameras, sources), shape_model=space_name, **mrec.summary(),
                   model=model_info or {})
        for i, (img, cam) in enumerate(zip(images, mrec.cameras)):
            mask = silhouette(mrec.vertices_cam(i), mrec.faces, cam.with_pose(np.eye(4)), max_side=OVERLAY_MAX_SIDE)
            v = mrec.views[i]
            save_png(draw_overlay(img, [(mask, GREEN)], [(v.corr_uv[mrec.inliers[i]], CYAN)]),
                     stage / f"overlay_{i}.png")
        names = [f.name for f in stage.iterdir()]
    return [Path(out_dir) / n for n in sorted(names)]


def write_multiview_registration(out_dir: str | Path, result, model_info: dict | None = None,
                                 sources: list[str] | None = None, world_frame: str = WORLD_FRAME) -> list[Path]:
    """Write the several-view ``register`` outputs of an :class:`xrecon.api.MultiViewRegistration`
    (``world_frame`` as for :func:`write_multiview_reconstruction`)."""
    if not result.success:
        raise InputError(f"registration failed: {result.registration.reason}")
    from xrecon.anatomy.mesh_io import write_pose

    reg, mrec, bone = result.registration, result.reconstruction, result.bone
    final = result.final_ct_to_world
    refined = result.ct_to_world_refined is not None
    extra = {}
    if result.refine_info:  # refinement asked for: the pose before it, and what it did
        extra = {"ct_to_world_before_refinement": reg.ct_to_world, "refined": refined,
                 "refinement": result.refine_info}
    with staged_output(out_dir) as stage:
        write_pose(stage / "registration.json", final, ct_frame(result), world_frame,
                   matrix_is="ct_to_world" + (" (after intensity refinement over all views)" if refined else ""),
                   ct_to_cam=[{"view": i, "from_frame": "ct (as above)", "to_frame": CAMERA_FRAME_I.format(i=i),
                               "matrix": m} for i, m in enumerate(result.final_ct_to_cam)],
                   cameras=_views(mrec.cameras, sources), ct_bone=bone.source, success=bool(reg.success),
                   confident=bool(reg.confident), notes=list(reg.notes), registration=reg.summary(),
                   reconstruction=mrec.summary(), model_to_world=mrec.model_to_world, model=model_info or {},
                   **extra)

        def posed(T: np.ndarray) -> np.ndarray:
            return bone.vertices @ T[:3, :3].T + T[:3, 3]

        _write_mesh(stage / "ct_bone_world.ply", posed(final), bone.faces, world_frame,
                    f"CT bone surface of {bone.source}")
        for i, (img, cam) in enumerate(zip(result.images, mrec.cameras)):
            # cam carries world_to_cam; yellow: before refinement, green: the final pose
            layers = [(silhouette(posed(reg.ct_to_world), bone.faces, cam, max_side=OVERLAY_MAX_SIDE), YELLOW)] \
                if refined else []
            layers.append((silhouette(posed(final), bone.faces, cam, max_side=OVERLAY_MAX_SIDE), GREEN))
            save_png(draw_overlay(img, layers), stage / f"overlay_{i}.png")
        names = [f.name for f in stage.iterdir()]
    return [Path(out_dir) / n for n in sorted(names)]


# ---------------------------------------------------------------------------- views without a shared frame
def write_independent_reconstruction(out_dir: str | Path, irec, images: list[np.ndarray], space_name: str,
                                     model_info: dict | None = None, sources: list[str] | None = None) -> list[Path]:
    """Write ``reconstruct``'s outputs for views whose relative poses are unknown
    (:class:`~xrecon.methods.recon.independent_views.IndependentViewsReconstruction`):

    ``reconstruction_cam_<i>.ply`` / ``.stl``  the shared shape posed in view ``i``'s
                        camera frame, mm (each with a ``.json`` sidecar naming the frame;
                        none for a refused view);
    ``points.csv``      N points: vertex id, model xyz (mm), ``u_<i>, v_<i>`` (px) in every
                        view, ``confidence_<i>``;
    ``pose.json``       ``{"from_frame": model, "to_frame": camera of the first used view,
                        "matrix": its model_to_cam}`` plus every view's ``model_to_cam``
                        (``null`` when refused), the cameras (intrinsics only), what each
                        view contributed, shape coefficients, confidence and notes;
    ``overlay_<i>.png`` view ``i``: the shape's outline at that view's pose (green) and its
                        inlier pixels (cyan).
    """
    if not irec.success:
        raise InputError(f"no reconstruction: {irec.reason}")
    from xrecon.anatomy.mesh_io import write_pose

    used = irec.used_views()
    with staged_output(out_dir) as stage:
        src = f"xrecon reconstruct, {irec.n_views} views without a shared frame ({space_name} shape model)"
        for i in used:
            frame = CAMERA_FRAME_I.format(i=i)
            _write_mesh(stage / f"reconstruction_cam_{i}.ply", irec.vertices_cam(i), irec.faces, frame, src)
            _write_mesh(stage / f"reconstruction_cam_{i}.stl", irec.vertices_cam(i), irec.faces, frame, src)
        pm = irec.vertices_model[irec.point_ids]
        cols = [irec.point_ids, pm] + [irec.points_uv[i] for i in range(irec.n_views)] + [
            irec.points_confidence[i] for i in range(irec.n_views)]
        table = np.column_stack(cols)
        header = ",".join(["vertex_id", "x_model_mm", "y_model_mm", "z_model_mm"]
                          + [f"{a}_{i}_px" for i in range(irec.n_views) for a in ("u", "v")]
                          + [f"confidence_{i}" for i in range(irec.n_views)])
        np.savetxt(stage / "points.csv", table, delimiter=",", header=header, comments="",
                   fmt=["%d"] + ["%.3f"] * (table.shape[1] - 1))
        first = used[0]
        write_pose(stage / "pose.json", irec.model_to_cam[first], MODEL_FRAME, CAMERA_FRAME_I.format(i=first),
                   matrix_is=f"model_to_cam of view {first}",
                   model_to_cam=[{"view": i, "to_frame": CAMERA_FRAME_I.format(i=i),
                                  "matrix": irec.model_to_cam[i] if i in used else None}
                                 for i in range(irec.n_views)],
                   world_frame=NO_FRAME, cameras=_views(irec.cameras, sources, NO_FRAME), shape_model=space_name,
                   **irec.summary(), model=model_info or {})
        for i, (img, cam) in enumerate(zip(images, irec.cameras)):
            v = irec.views[i]
            layers = []
            if i in used:
                layers = [(silhouette(irec.vertices_cam(i), irec.faces, cam.with_pose(np.eye(4)),
                                      max_side=OVERLAY_MAX_SIDE), GREEN)]
            save_png(draw_overlay(img, layers, [(v.corr_uv[irec.inliers[i]], CYAN)]), stage / f"overlay_{i}.png")
        names = [f.name for f in stage.iterdir()]
    return [Path(out_dir) / n for n in sorted(names)]


def write_independent_registration(out_dir: str | Path, result, model_info: dict | None = None,
                                   sources: list[str] | None = None) -> list[Path]:
    """Write ``register``'s outputs of an :class:`xrecon.api.IndependentViewsRegistration`:

    ``registration.json``  ``{"from_frame": ct, "to_frame": camera of the first registered
                        view, "matrix": its ct_to_cam}`` plus ``ct_to_cam`` of every view
                        (``null`` for a refused one), the cameras, confidence and diagnostics;
    ``ct_bone_cam_<i>.ply``  the CT's bone surface posed in view ``i``'s camera frame;
    ``overlay_<i>.png`` the CT bone's outline (green) in view ``i``.
    """
    if not result.success:
        raise InputError(f"registration failed: {result.registration.reason}")
    from xrecon.anatomy.mesh_io import write_pose

    reg, irec, bone = result.registration, result.reconstruction, result.bone
    done = [i for i in range(irec.n_views) if np.isfinite(reg.ct_to_cam[i]).all()]
    with staged_output(out_dir) as stage:
        first = done[0]
        write_pose(stage / "registration.json", reg.ct_to_cam[first], ct_frame(result),
                   CAMERA_FRAME_I.format(i=first), matrix_is=f"ct_to_cam of view {first}",
                   ct_to_cam=[{"view": i, "from_frame": "ct (as above)", "to_frame": CAMERA_FRAME_I.format(i=i),
                               "matrix": reg.ct_to_cam[i] if i in done else None} for i in range(irec.n_views)],
                   world_frame=NO_FRAME, cameras=_views(irec.cameras, sources, NO_FRAME), ct_bone=bone.source,
                   success=bool(reg.success), confident=bool(reg.confident), notes=list(reg.notes),
                   registration=reg.summary(), reconstruction=irec.summary(), model=model_info or {})
        for i in done:
            posed = bone.vertices @ reg.ct_to_cam[i][:3, :3].T + reg.ct_to_cam[i][:3, 3]
            _write_mesh(stage / f"ct_bone_cam_{i}.ply", posed, bone.faces, CAMERA_FRAME_I.format(i=i),
                        f"CT bone surface of {bone.source}")
        for i, (img, cam) in enumerate(zip(result.images, irec.cameras)):
            layers = []
            if i in done:
                posed = bone.vertices @ reg.ct_to_cam[i][:3, :3].T + reg.ct_to_cam[i][:3, 3]
                layers = [(silhouette(posed, bone.faces, cam.with_pose(np.eye(4)), max_side=OVERLAY_MAX_SIDE), GREEN)]
            save_png(draw_overlay(img, layers), stage / f"overlay_{i}.png")
        names = [f.name for f in stage.iterdir()]
    return [Path(out_dir) / n for n in sorted(names)]
