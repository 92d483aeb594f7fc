"""``xrecon reconstruct``: the bone's shape and pose from one X-ray."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from xrecon.cli.common import check_inputs_exist, check_output_folder, handle_errors, positive


@handle_errors
def reconstruct(
    image: Path = typer.Argument(..., help="X-ray image (PNG / TIFF / DICOM), bone bright or dark."),
    camera: Optional[Path] = typer.Option(None, "--camera", help="Camera JSON (intrinsics; default: the image's "
                                                                  "sidecar <image>.json)."),
    sdd: Optional[float] = typer.Option(None, "--sdd", callback=positive, help="Source-to-detector distance (mm), without --camera."),
    pixel_spacing: Optional[float] = typer.Option(None, "--pixel-spacing", callback=positive, help="Detector pixel size (mm)."),
    out: Path = typer.Option(Path("out/reconstruct"), "--out", help="Output folder."),
    model: Optional[Path] = typer.Option(None, "--model", help="Reconstruction model (default: shipped weights)."),
    no_shape_fit: bool = typer.Option(False, "--no-shape-fit", help="Skip the joint pose + shape refinement."),
) -> None:
    """Reconstruct the bone (pelvis) in 3D and its pose from a single X-ray.

    Writes OUT/reconstruction_cam.ply/.stl (posed mesh, camera frame), OUT/points.csv
    and points_cam.ply (points with image coordinates and confidence), OUT/pose.json
    (model_to_cam, shape, confidence) and OUT/overlay.png.
    """
    check_output_folder(out)
    check_inputs_exist(image, camera, model)
    from xrecon import api
    from xrecon.errors import InputError

    img, cam = api.load_xray(image, camera, sdd_mm=sdd, pixel_spacing_mm=pixel_spacing)
    from xrecon.methods.recon.outputs import write_reconstruction  # heavy: after the input is read
    from xrecon.methods.recon.pipeline import ReconConfig

    rec = api.reconstruct(img, cam, model=model, config=ReconConfig(refine_shape=not no_shape_fit))
    if not rec.success:
        raise InputError(f"no reconstruction: {rec.reason}", image)
    _net, space, info = api._load_model(None if model is None else str(model))
    files = write_reconstruction(out, rec, img, space.name, {"file": str(model or "shipped default"),
                                                              "command": info.get("command")})
    typer.echo(f"reconstruction: {'confident' if rec.confident else 'LOW CONFIDENCE: ' + '; '.join(rec.notes)}")
    typer.echo(f"{int(rec.inliers.sum())} inlier correspondences, reprojection {rec.reprojection_error_px:.2f} px, "
               f"{rec.timings_s.get('total', float('nan')):.2f} s")
    for f in files:
        typer.echo(f"wrote {f}")
