"""``xrecon reconstruct``: the bone's shape and pose from one X-ray, or from several
whose cameras share one world frame."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from xrecon.cli.common import check_inputs_exist, check_output_folder, handle_errors, positive


@handle_errors
def reconstruct(
    image: List[Path] = typer.Argument(..., help="X-ray image (PNG / TIFF / DICOM), bone bright or dark; several "
                                                  "images: views of one bone, cameras in one shared frame (or "
                                                  "--independent-views)."),
    camera: Optional[List[Path]] = typer.Option(None, "--camera", help="Camera JSON (intrinsics; default: the "
                                                "image's sidecar <image>.json); several images: one --camera per "
                                                "image, in the same order, each with its world_to_cam or C-arm "
                                                "angles."),
    sdd: Optional[float] = typer.Option(None, "--sdd", callback=positive, help="Source-to-detector distance (mm), without --camera."),
    pixel_spacing: Optional[float] = typer.Option(None, "--pixel-spacing", callback=positive, help="Detector pixel size (mm)."),
    out: Path = typer.Option(Path("out/reconstruct"), "--out", help="Output folder."),
    model: Optional[Path] = typer.Option(None, "--model", help="Reconstruction model (default: shipped weights)."),
    no_shape_fit: bool = typer.Option(False, "--no-shape-fit", help="Skip the joint pose + shape refinement."),
    independent_views: bool = typer.Option(False, "--independent-views", help="Several images whose relative poses "
                                           "are unknown (films taken separately): one shape, one pose per view; "
                                           "poses in the camera files are not used."),
) -> None:
    """Reconstruct the bone (pelvis) in 3D and its pose from a single X-ray.

    Writes OUT/reconstruction_cam.ply/.stl (posed mesh, camera frame), OUT/points.csv
    and points_cam.ply (points with image coordinates and confidence), OUT/pose.json
    (model_to_cam, shape, confidence) and OUT/overlay.png.

    Several X-rays of one bone (cameras in one shared frame: each camera JSON with its
    world_to_cam, or C-arm angles primary_angle_deg / secondary_angle_deg /
    source_to_isocentre_mm, or DICOM positioner tags): one joint solve; writes
    OUT/reconstruction_world.ply/.stl (world frame), points.csv, points_world.ply,
    pose.json (model_to_world, each view's model_to_cam and what it contributed) and
    overlay_<i>.png per view. With --independent-views (no shared frame):
    OUT/reconstruction_cam_<i>.ply/.stl per view, points.csv, pose.json, overlay_<i>.png.
    """
    check_output_folder(out)
    check_inputs_exist(*image, *(camera or []), model)
    from xrecon import api
    from xrecon.errors import InputError

    if len(image) > 1 or len(camera or []) > 1:
        imgs, cams = api.load_views(image, camera or None, sdd_mm=sdd, pixel_spacing_mm=pixel_spacing,
                                    independent_views=independent_views)
        frame = api.views_frame(image, camera or None, sdd_mm=sdd, pixel_spacing_mm=pixel_spacing,
                                independent_views=independent_views)
        from xrecon.methods.recon import outputs_multiview as outputs  # heavy: after the inputs
        from xrecon.methods.recon.pipeline import ReconConfig

        mrec = api.reconstruct(imgs, cameras=cams, model=model, config=ReconConfig(refine_shape=not no_shape_fit),
                               independent_views=independent_views)
        if not mrec.success:
            raise InputError(f"no reconstruction from the {len(image)} X-rays: {mrec.reason}")
        _net, space, info = api._load_model(None if model is None else str(model))
        model_info = {"file": str(model or "shipped default"), "command": info.get("command")}
        if independent_views:
            files = outputs.write_independent_reconstruction(out, mrec, imgs, space.name, model_info,
                                                             sources=[str(p) for p in image])
        else:
            from xrecon.geometry.carm import ISOCENTRE_FRAME

            files = outputs.write_multiview_reconstruction(
                out, mrec, imgs, space.name, model_info, sources=[str(p) for p in image],
                world_frame=ISOCENTRE_FRAME if frame == "isocentre" else outputs.WORLD_FRAME)
        typer.echo(f"reconstruction from {len(image)} views: "
                   f"{'confident' if mrec.confident else 'LOW CONFIDENCE: ' + '; '.join(mrec.notes)}")
        for r in mrec.reports:
            typer.echo(f"view {r.index} ({image[r.index]}): {r.status}" + (f" ({r.reason})" if r.reason else ""))
        for f in files:
            typer.echo(f"wrote {f}")
        return
    image, camera = image[0], (camera[0] if camera else None)

    reading = api.load_xray_report(image, camera, sdd_mm=sdd, pixel_spacing_mm=pixel_spacing)
    img, cam = reading.image, reading.camera
    from xrecon.methods.recon.outputs import write_reconstruction  # heavy: after the input is read
    from xrecon.methods.recon.pipeline import ReconConfig

    rec = api.reconstruct(img, cam, model=model, config=ReconConfig(refine_shape=not no_shape_fit))
    if not rec.success:
        raise InputError(f"no reconstruction: {rec.reason}", image)
    rec.notes.extend(reading.notes)  # assumed geometry, strips, markers (xray_io.read_xray_report)
    _net, space, info = api._load_model(None if model is None else str(model))
    files = write_reconstruction(out, rec, img, space.name, {"file": str(model or "shipped default"),
                                                              "command": info.get("command")},
                                 xray=reading.to_dict())
    typer.echo(reading.geometry.get("statement", ""))
    typer.echo(f"reconstruction: {'confident' if rec.confident else 'LOW CONFIDENCE: ' + '; '.join(rec.notes)}")
    typer.echo(f"{int(rec.inliers.sum())} inlier correspondences, reprojection {rec.reprojection_error_px:.2f} px, "
               f"{rec.timings_s.get('total', float('nan')):.2f} s")
    for f in files:
        typer.echo(f"wrote {f}")
