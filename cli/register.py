"""``xrecon register``: pose a CT in the camera of one X-ray, or in the shared
world frame of several."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from xrecon.cli.common import check_inputs_exist, check_output_folder, handle_errors, positive


@handle_errors
def register(
    image: List[Path] = typer.Argument(..., help="X-ray image (PNG / TIFF / DICOM); several images: views of one "
                                                  "bone, cameras in one shared frame (or --independent-views)."),
    ct: Path = typer.Option(..., "--ct", help="CT volume (NIfTI / NRRD / MHA / DICOM folder), any frame."),
    labels: Optional[Path] = typer.Option(None, "--labels", help="Label map on the CT grid (default: bone by "
                                                                  "HU threshold)."),
    label_names: Optional[str] = typer.Option(None, "--label-names", help="Names of the label ids: "
                                              "'totalsegmentator', or a JSON / CSV file of id -> name."),
    structures: Optional[str] = typer.Option(None, "--structures", help="Labels to use: names, ids or groups, "
                                                                         "comma-separated (needs --labels)."),
    camera: Optional[List[Path]] = typer.Option(None, "--camera", help="Camera JSON (default: the image's "
                                                "sidecar); several images: one --camera per image, in the same "
                                                "order, each with its world_to_cam."),
    sdd: Optional[float] = typer.Option(None, "--sdd", callback=positive, help="Source-to-detector distance (mm), without --camera."),
    pixel_spacing: Optional[float] = typer.Option(None, "--pixel-spacing", callback=positive, help="Detector pixel size (mm)."),
    refine: bool = typer.Option(False, "--refine", help="Refine the pose by intensity (DRR vs X-ray)."),
    out: Path = typer.Option(Path("out/register"), "--out", help="Output folder."),
    model: Optional[Path] = typer.Option(None, "--model", help="Model file: patient-wide reconstruction (default: "
                                                                "shipped weights) or a patient-specific SCR model "
                                                                "from `xrecon train scr` (then --ct is its CT)."),
    independent_views: bool = typer.Option(False, "--independent-views", help="Several images whose relative poses "
                                           "are unknown (films taken separately): one CT pose per view; poses in "
                                           "the camera files are not used."),
) -> None:
    """Register a CT to an X-ray through the patient-wide reconstruction
    (or with a patient-specific scene-coordinate model, --model scr.pt).

    Writes OUT/registration.json (ct_to_cam, and ct_to_cam_refined with --refine),
    OUT/ct_bone_cam.ply and OUT/overlay.png (CT bone outline on the X-ray).

    Several X-rays (cameras in one shared frame: world_to_cam or C-arm angles):
    OUT/registration.json (ct_to_world and each view's ct_to_cam), OUT/ct_bone_world.ply
    and OUT/overlay_<i>.png per view (--refine: one intensity loss over all views; no --model scr
    yet). With
    --independent-views (no shared frame): registration.json (each view's ct_to_cam),
    OUT/ct_bone_cam_<i>.ply and overlay_<i>.png per view.
    """
    check_output_folder(out)
    check_inputs_exist(*image, ct, labels, *(camera or []), model)
    from xrecon import api

    if len(image) > 1 or len(camera or []) > 1:
        from xrecon.errors import InputError

        if api.model_kind(model) == "scr":
            raise InputError("a patient-specific SCR model registers one X-ray at a time", model)
        if refine and independent_views:
            raise InputError("--refine over views without a shared frame (--independent-views) is not available: "
                             "register without it, or refine one view at a time")
        api.load_views(image, camera or None, sdd_mm=sdd, pixel_spacing_mm=pixel_spacing,
                       independent_views=independent_views)  # refuse bad views first
        frame = api.views_frame(image, camera or None, sdd_mm=sdd, pixel_spacing_mm=pixel_spacing,
                                independent_views=independent_views)
        result = api.register(image, camera or None, ct, labels=labels, structures=structures, sdd_mm=sdd,
                              pixel_spacing_mm=pixel_spacing, model=model, label_names=label_names,
                              independent_views=independent_views, refine=refine)
        if not result.success:
            if not result.reconstruction.success:
                raise InputError(f"no reconstruction to register the CT to: {result.reconstruction.reason}")
            raise InputError(f"the CT's bone ({result.bone.source}) could not be registered to the bone "
                             f"reconstructed from the {len(image)} X-rays: {result.registration.reason}", ct)
        from xrecon.methods.recon import outputs_multiview as outputs

        _net, _space, info = api._load_model(None if model is None else str(model))
        model_info = {"file": str(model or "shipped default"), "command": info.get("command")}
        if independent_views:
            files = outputs.write_independent_registration(out, result, model_info, sources=[str(p) for p in image])
        else:
            from xrecon.geometry.carm import ISOCENTRE_FRAME

            files = outputs.write_multiview_registration(
                out, result, model_info, sources=[str(p) for p in image],
                world_frame=ISOCENTRE_FRAME if frame == "isocentre" else outputs.WORLD_FRAME)
        reg = result.registration
        typer.echo(f"registration from {len(image)} views: "
                   f"{'confident' if reg.confident else 'LOW CONFIDENCE: ' + '; '.join(reg.notes)}")
        for r in result.reconstruction.reports:
            typer.echo(f"view {r.index} ({image[r.index]}): {r.status}" + (f" ({r.reason})" if r.reason else ""))
        if refine and not independent_views:
            ri = result.refine_info
            typer.echo(f"refinement over {len(image)} views: mean similarity "
                       f"{ri.get('similarity_init', float('nan')):.4f} -> {ri.get('similarity_final', float('nan')):.4f}"
                       + ("" if result.ct_to_world_refined is not None else f" (kept the start: {ri.get('reason')})"))
        for f in files:
            typer.echo(f"wrote {f}")
        return
    image, camera = image[0], (camera[0] if camera else None)

    if api.model_kind(model) == "scr":
        from xrecon.anatomy.ct_io import read_ct

        img, cam = api.load_xray(image, camera, sdd_mm=sdd, pixel_spacing_mm=pixel_spacing)
        ct_vol = read_ct(ct)
        from xrecon.methods.recon.outputs import write_scr_registration  # heavy: after the inputs are read
        from xrecon.methods.scr.predict import register_scr

        bone = api.ct_bone(ct_vol, labels, structures, label_names=label_names)
        res = register_scr(img, cam, model, ct_vol, refine, labels=labels)
        files = write_scr_registration(out, res, img, cam, bone, ct_source=str(ct_vol.source))
        typer.echo(f"registration (patient-specific SCR): {'ok' if res.success else res.reason}")
        for f in files:
            typer.echo(f"wrote {f}")
        return

    result = api.register(image, camera, ct, labels=labels, structures=structures, refine=refine, sdd_mm=sdd,
                          pixel_spacing_mm=pixel_spacing, model=model, label_names=label_names)
    from xrecon.methods.recon.outputs import write_registration

    if not result.success:
        from xrecon.errors import InputError

        if not result.reconstruction.success:  # nothing read from the X-ray: its problem
            raise InputError(f"no reconstruction to register the CT to: {result.reconstruction.reason}", image)
        raise InputError(f"the CT's bone ({result.bone.source}) could not be registered to the bone reconstructed "
                         f"from {image}: {result.registration.reason}", ct)
    _net, _space, info = api._load_model(None if model is None else str(model))
    files = write_registration(out, result, {"file": str(model or "shipped default"),
                                             "command": info.get("command")})
    reg = result.registration
    typer.echo(f"registration: {'confident' if reg.confident else 'LOW CONFIDENCE: ' + '; '.join(reg.notes)}")
    if refine:
        ri = result.refine_info
        typer.echo(f"refinement: similarity {ri.get('similarity_init', float('nan')):.4f} -> "
                   f"{ri.get('similarity_final', float('nan')):.4f}"
                   + ("" if ri.get("success") else f" (kept the initial pose: {ri.get('reason')})"))
    for f in files:
        typer.echo(f"wrote {f}")
