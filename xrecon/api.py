"""The Python API of the product: one function per task.

* :func:`reconstruct` -- one X-ray in, the bone's shape and pose in its camera out
  (patient-wide, no training on the patient; seed 000 phase 2).
* :func:`register` -- one X-ray and a CT of the same bone in, the CT-to-camera
  pose out (the CT may be in any frame: any rotation, origin, LPS or RAS).

Both take a list of X-rays and one camera per X-ray, the cameras in one shared
frame (each with its ``world_to_cam``, or C-arm angles about one isocentre): one
joint solve over every view (:mod:`xrecon.methods.recon.multiview`,
docs/multiview.md); or, with ``independent_views=True``, views whose relative
poses are unknown: one shape, one pose per view
(:mod:`xrecon.methods.recon.independent_views`). Checked by :func:`load_views`.
A list of one X-ray is the single-view call.

Frames: the camera is OpenCV's (:mod:`xrecon.geometry`); the CT's frame is its
own world frame as read (RAS+ mm; files stored LPS are converted on reading,
so poses are ``ct_ras_to_cam``); the reconstruction's ``model`` frame is the
shape model's (see :mod:`xrecon.methods.recon.shape`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from xrecon.errors import InputError

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _load_model(path: str | None):
    from xrecon.methods.recon.model_io import load_recon_model

    return load_recon_model(path)


def load_xray(image, camera=None, *, sdd_mm: float | None = None,
              pixel_spacing_mm: float | None = None) -> tuple[np.ndarray, Camera]:
    """An X-ray and its camera from what a user has.

    Args:
        image: a file path (PNG / TIFF / DICOM / ..., read by
            :func:`xrecon.anatomy.xray_io.read_xray`) or an ``(H, W)`` array.
        camera: a :class:`Camera`, a camera / geometry JSON path (``Camera.save``
            layout or a sidecar of :func:`~xrecon.anatomy.xray_io.read_xray`), or
            ``None`` (the image's own sidecar ``<image>.json``, or ``sdd_mm`` +
            ``pixel_spacing_mm``).
        sdd_mm, pixel_spacing_mm: detector geometry when there is no camera file.

    Returns ``(image (H, W) float32, camera)``; :func:`load_xray_report` also says
    which geometry was used (a DICOM film without one gets an assumed geometry) and
    what was cut off or painted out.
    """
    reading = load_xray_report(image, camera, sdd_mm=sdd_mm, pixel_spacing_mm=pixel_spacing_mm)
    return reading.image, reading.camera


def load_xray_report(image, camera=None, *, sdd_mm: float | None = None, pixel_spacing_mm: float | None = None):
    """:func:`load_xray` (same arguments) as an :class:`~xrecon.anatomy.xray_io.XrayReading`:
    the image, its camera, the geometry used (``geometry["calibrated"]``, its
    ``statement``), what was done to the intensities, the collimator strips and
    markers found on a DICOM film, and ``notes``."""
    from xrecon.anatomy.xray_io import XrayReading, read_xray_report

    cam = None
    if camera is not None and not isinstance(camera, (str, Path)):  # torch only now: a bad file is refused without it
        from xrecon.geometry import Camera

        cam = camera if isinstance(camera, Camera) else None
    source = str(image) if isinstance(image, (str, Path)) else None
    if source is not None:
        if cam is not None:  # the caller's camera wins (scaled with the image when a large file is shrunk)
            reading = read_xray_report(image, camera=cam)
        else:
            reading = read_xray_report(image, sidecar=camera, sdd_mm=sdd_mm, pixel_spacing_mm=pixel_spacing_mm)
        img, cam = reading.image, reading.camera
    else:
        from xrecon.geometry import Camera

        if camera is not None and cam is None:
            cam = Camera.load(camera)
        img = np.asarray(image, np.float32)
        if img.ndim != 2:
            raise InputError(f"expected a grey-level (H, W) image, got an array of shape {img.shape}")
        if cam is None:
            if sdd_mm is None or pixel_spacing_mm is None:
                raise InputError("an image array needs a camera (or sdd_mm and pixel_spacing_mm)")
            cam = Camera.from_detector(sdd_mm, pixel_spacing_mm, img.shape[0], img.shape[1])
        reading = XrayReading(img, cam, "", {"calibrated": True, "statement": "geometry: calibrated (given with "
                                             "the image array)", "sources": {}, "assumed": []})
    if cam is None:
        raise InputError("no camera: pass a camera JSON, or the detector's sdd_mm and pixel_spacing_mm", source)
    if (cam.height, cam.width) != img.shape:
        raise InputError(f"the image is {img.shape[0]}x{img.shape[1]} px but its camera describes "
                         f"{cam.height}x{cam.width} px", source)
    return reading


def model_kind(path: str | Path | None) -> str:
    """``"recon"`` (patient-wide, the default) or ``"scr"`` (patient-specific, seed 002)
    from a model file's format tag."""
    if path is None:
        return "recon"
    from xrecon.io import load_torch_file
    from xrecon.methods.recon.model_io import FORMAT as RECON_FORMAT
    from xrecon.methods.scr.model_io import FORMAT as SCR_FORMAT

    payload = load_torch_file(path)
    fmt = payload.get("format") if isinstance(payload, dict) else None
    kinds = {RECON_FORMAT: "recon", SCR_FORMAT: "scr"}
    if fmt not in kinds:
        raise InputError(f"not an xrecon model (format tag {fmt!r})", path)
    return kinds[fmt]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _several(image) -> bool:
    return isinstance(image, (list, tuple)) and len(image) > 1


def _one(image, camera, cameras):
    """The single-view arguments of a call given a list of one image (or none)."""
    if isinstance(image, (list, tuple)):
        cams = cameras if cameras is not None else camera
        if cams is not None and not isinstance(cams, (list, tuple)):
            cams = [cams]
        if cams is not None and len(cams) != len(image):
            raise InputError(f"{_count(len(image), 'image')} but {_count(len(cams), 'camera')}: give one camera "
                             "per image, in the same order")
        return image[0], (None if cams is None else cams[0])
    return image, (camera if cameras is None else _one([image], None, cameras)[1])


#: what each kind of pose says of the frame it puts a view in (:func:`load_views`)
POSE_KINDS = {"world_to_cam": "a world_to_cam (the frame its author chose)",
              "carm": "C-arm angles (the isocentre frame of xrecon.geometry.carm)"}

INDEPENDENT_HINT = ("; films taken separately, whose relative poses are unknown: independent_views=True "
                    "(CLI: --independent-views)")


def _pose_kind(img, cam, sdd_mm, pixel_spacing_mm) -> tuple[str | None, Path | None, str | None]:
    """``(kind, file, problem)`` of a view's pose without decoding its pixels: kind
    ``"world_to_cam"``, ``"carm"`` or ``None``; the file the pose (or its absence) is
    reported against; why positioner tags that are present give no pose."""
    from xrecon.anatomy.xray_io import read_geometry, sidecar_candidates
    from xrecon.geometry.camera import parse_camera_json, read_camera_json

    if cam is not None and not isinstance(cam, (str, Path)):
        return "world_to_cam", None, None  # a Camera object: its world_to_cam
    if isinstance(img, (str, Path)):
        geo = read_geometry(img, sidecar=cam, sdd_mm=sdd_mm, pixel_spacing_mm=pixel_spacing_mm)
        side = Path(cam) if cam is not None else next((p for p in sidecar_candidates(img) if p.is_file()), None)
        return geo["pose_kind"], geo["pose_source"] or side or Path(img), geo["pose_problem"]
    if cam is None:
        return None, None, None
    f = parse_camera_json(read_camera_json(cam), cam)
    kind = "world_to_cam" if f["world_to_cam"] is not None else ("carm" if f["carm"] is not None else None)
    return kind, Path(cam), None


def load_views(images, cameras=None, *, sdd_mm: float | None = None, pixel_spacing_mm: float | None = None,
               independent_views: bool = False) -> tuple[list[np.ndarray], list[Camera]]:
    """Several X-rays and their cameras.

    Args:
        images: a list of X-ray files or ``(H, W)`` arrays.
        cameras: one per image, in the same order (:class:`Camera` objects or camera
            JSON paths), or ``None``: each image's own sidecar ``<image>.json`` (or,
            for a DICOM, its tags).
        sdd_mm, pixel_spacing_mm: detector geometry overrides for every view.
        independent_views: the views share no frame (films taken separately): any
            pose a camera gives is ignored (each camera's ``world_to_cam`` becomes the
            identity) and the images may differ in size. Otherwise every view needs
            a pose in one shared frame, all of one kind: each camera's
            ``world_to_cam`` (case a), or each view's C-arm angles
            (``primary_angle_deg``, ``secondary_angle_deg``, ``source_to_isocentre_mm``
            in its JSON, or the DICOM positioner tags: the isocentre frame of
            :mod:`xrecon.geometry.carm`, case b).

    Raises :class:`InputError`, naming the file, when the counts differ, a view has no
    pose (and ``independent_views`` is not set), two views' poses are of different
    kinds (their frames disagree), two views have the same pose, or the images differ
    in size (not with ``independent_views``).
    """
    images = list(images)
    if not images:
        raise InputError("no image given")
    if cameras is not None and not isinstance(cameras, (list, tuple)):
        cameras = [cameras]
    cams = [None] * len(images) if cameras is None else list(cameras)
    if len(cams) != len(images):
        raise InputError(f"{_count(len(images), 'image')} but {_count(len(cams), 'camera')}: give one camera per "
                         "image, in the same order (CLI: one --camera per IMAGE)")
    names = [str(img) if isinstance(img, (str, Path)) else f"image {i}" for i, img in enumerate(images)]
    kinds = []
    for i, (img, cam) in enumerate(zip(images, cams)):  # cheap checks first: no pixel is decoded before the poses
        where = img if isinstance(img, (str, Path)) else None
        if cam is None and where is None:
            raise InputError(f"{names[i]} is an array without a camera: give one camera per image")
        kind, src, problem = _pose_kind(img, cam, sdd_mm, pixel_spacing_mm)
        if independent_views:
            if kind is not None:
                log.info("%s: its pose (%s) is not used: independent_views", src or names[i], POSE_KINDS[kind])
            continue
        if kind is None:
            what = "camera JSON" if src is not None and src.suffix.lower() == ".json" else "X-ray"
            raise InputError(
                f"{what} gives no pose in a shared frame: with several X-rays each view needs its 'world_to_cam' "
                "(one shared world frame) or its C-arm angles 'primary_angle_deg', 'secondary_angle_deg', "
                "'source_to_isocentre_mm' (DICOM: PositionerPrimaryAngle, PositionerSecondaryAngle, "
                "DistanceSourceToPatient)" + (f" ({problem})" if problem else "") + INDEPENDENT_HINT,
                src or where)
        if kinds and kind != kinds[0]:
            raise InputError(f"the views' frames disagree: this view's pose comes from {POSE_KINDS[kind]}, "
                             f"{names[0]}'s from {POSE_KINDS[kinds[0]]}, and nothing relates the two frames: give "
                             "every view the same kind of pose" + INDEPENDENT_HINT, src or where)
        kinds.append(kind)
    loaded = [load_xray(img, cam, sdd_mm=sdd_mm, pixel_spacing_mm=pixel_spacing_mm) for img, cam in zip(images, cams)]
    if independent_views:
        import torch

        return [x[0] for x in loaded], [x[1].with_pose(torch.eye(4, dtype=torch.float64)) for x in loaded]
    h0, w0 = loaded[0][0].shape
    for i, (img, cam) in enumerate(loaded):
        if img.shape != (h0, w0):
            raise InputError(f"the X-rays differ in size: {names[0]} is {h0}x{w0} px, this one "
                             f"{img.shape[0]}x{img.shape[1]}: views in one shared frame must share one detector "
                             "size" + INDEPENDENT_HINT, images[i] if isinstance(images[i], (str, Path)) else None)
        for j in range(i):
            if np.allclose(cam.world_to_cam[0].numpy(), loaded[j][1].world_to_cam[0].numpy(), atol=1e-6):
                raise InputError(f"its camera has the same world_to_cam as {names[j]}'s: two views from one "
                                 "pose add no depth (is a camera's pose missing or copied?)",
                                 images[i] if isinstance(images[i], (str, Path)) else None)
    return [x[0] for x in loaded], [x[1] for x in loaded]


def views_frame(images, cameras=None, *, sdd_mm: float | None = None, pixel_spacing_mm: float | None = None,
                independent_views: bool = False) -> str:
    """What frame :func:`load_views`'s poses put the views in: ``"none"`` (independent
    views), ``"isocentre"`` (C-arm angles, :mod:`xrecon.geometry.carm`) or ``"world"``
    (each camera's ``world_to_cam``). Call it after :func:`load_views` has accepted the views."""
    if independent_views:
        return "none"
    images = list(images)
    cams = [None] * len(images) if cameras is None else (list(cameras) if isinstance(cameras, (list, tuple))
                                                         else [cameras])
    kind = _pose_kind(images[0], cams[0], sdd_mm, pixel_spacing_mm)[0]
    return "isocentre" if kind == "carm" else "world"


def reconstruct(image, camera=None, *, cameras=None, sdd_mm: float | None = None,
                pixel_spacing_mm: float | None = None, model: str | Path | None = None, config=None,
                multiview_config=None, independent_views: bool = False):
    """Recover the bone's shape and pose from one X-ray, or from several whose
    cameras share one world frame.

    Args:
        image: X-ray file or ``(H, W)`` array (bone bright or dark; any intensity
            scale), or a list of them (one bone, several views).
        camera: :class:`Camera`, camera JSON path, or ``None`` (see :func:`load_xray`);
            with several images a list, one per image (or pass ``cameras=``), each
            with its ``world_to_cam`` (:func:`load_views`).
        model: reconstruction model file (default: the shipped
            ``xrecon/weights/recon_default.pt``).
        config: :class:`xrecon.methods.recon.pipeline.ReconConfig`.
        multiview_config: :class:`xrecon.methods.recon.multiview.MultiViewConfig` (several views).
        independent_views: several images whose relative poses are unknown (films
            taken separately): one shape, one pose per view (:func:`load_views`).

    Returns:
        :class:`xrecon.methods.recon.pipeline.Reconstruction` (``success``,
        ``confident`` and ``notes`` say how far to trust it); with several images a
        :class:`xrecon.methods.recon.multiview.MultiViewReconstruction` (world frame),
        or with ``independent_views`` an
        :class:`xrecon.methods.recon.independent_views.IndependentViewsReconstruction`
        (one ``model_to_cam`` per view).
    """
    from xrecon.methods.recon.pipeline import ReconConfig, reconstruct_image

    if _several(image):
        imgs, cams = load_views(image, cameras if cameras is not None else camera, sdd_mm=sdd_mm,
                                pixel_spacing_mm=pixel_spacing_mm, independent_views=independent_views)
        from xrecon.methods.recon.multiview import MultiViewConfig, reconstruct_images

        net, space, _info = _load_model(None if model is None else str(model))
        if independent_views:
            from xrecon.methods.recon.independent_views import reconstruct_independent_images

            return reconstruct_independent_images(net, space, imgs, cams, config or ReconConfig(),
                                                  multiview_config or MultiViewConfig())
        return reconstruct_images(net, space, imgs, cams, config or ReconConfig(),
                                  multiview_config or MultiViewConfig())
    image, camera = _one(image, camera, cameras)
    reading = load_xray_report(image, camera, sdd_mm=sdd_mm, pixel_spacing_mm=pixel_spacing_mm)
    net, space, _info = _load_model(None if model is None else str(model))
    rec = reconstruct_image(net, space, reading.image, reading.camera, config or ReconConfig())
    rec.notes.extend(reading.notes)  # the assumed geometry, strips and markers: stated, not a doubt on the fit
    return rec


@dataclass
class Registration:
    """Result of :func:`register`.

    Attributes:
        ct_to_cam: ``(4, 4)`` CT (RAS+ world of the file) to camera, before refinement.
        ct_to_cam_refined: the refined pose (``refine=True``), else ``None``.
        reconstruction: the reconstruction the CT was registered through.
        registration: the 3D alignment / PnP diagnostics.
        bone: the CT's bone surface used (:class:`~xrecon.anatomy.bone.BoneModel`, CT frame).
        camera: the X-ray's camera; image: the X-ray.
        refine_info: refinement diagnostics (similarity before / after, iterations).
        ct_source: the CT the pose is of (its file, or the Volume's ``source``).
    """

    ct_to_cam: np.ndarray
    ct_to_cam_refined: np.ndarray | None
    reconstruction: object
    registration: object
    bone: object
    camera: Camera
    image: np.ndarray
    refine_info: dict = field(default_factory=dict)
    ct_source: str = ""

    @property
    def success(self) -> bool:
        return bool(self.registration.success)

    @property
    def final_ct_to_cam(self) -> np.ndarray:
        return self.ct_to_cam_refined if self.ct_to_cam_refined is not None else self.ct_to_cam


def ct_bone(ct, labels=None, structures=None, *, threshold_hu: float | None = None, label_names=None):
    """The CT's bone surface as a :class:`~xrecon.anatomy.bone.BoneModel` in the CT's frame.

    With ``labels`` (a label map path or Volume on the CT grid): the union of
    ``structures`` (names / ids / groups; default every label); a structure the
    map lacks is an :class:`InputError`. Without: a HU threshold
    (``threshold_hu``, default the anatomy module's). ``label_names`` names the
    label ids of a label-map file (``"totalsegmentator"``, a JSON / CSV path or a
    dict; see :func:`xrecon.anatomy.ct_io.read_labels`).
    """
    from xrecon.anatomy import bone as bone_mod
    from xrecon.anatomy.ct_io import read_labels
    from xrecon.anatomy.volume import Volume

    if labels is not None and not isinstance(labels, Volume):
        labels = read_labels(labels, like=ct, names=label_names)
    if labels is not None:
        return bone_mod.bone_from_labels(labels, structures)
    if structures is not None:
        raise InputError("--structures needs a label map (--labels)")
    kw = {} if threshold_hu is None else {"hu_threshold": threshold_hu}
    return bone_mod.bone_from_threshold(ct, **kw)


@dataclass
class MultiViewRegistration:
    """Result of :func:`register` given several X-rays (cameras in one world frame).

    Attributes:
        ct_to_world: ``(4, 4)`` CT (RAS+ world of the file) to the cameras' shared world frame.
        ct_to_cam: one ``(4, 4)`` per view, ``world_to_cam_i @ ct_to_world``.
        reconstruction: the :class:`~xrecon.methods.recon.multiview.MultiViewReconstruction`.
        registration: the :class:`~xrecon.methods.recon.multiview.MultiViewCTRegistration` diagnostics.
        bone: the CT's bone surface used (CT frame); cameras, images: the views.
        ct_source: the CT the pose is of.
        ct_to_world_refined: with ``refine=True``, the pose after intensity refinement
            over all views (:class:`xrecon.solve.refine.MultiViewRefiner`; ``None``
            when it did not raise the similarity); ``ct_to_world`` / ``ct_to_cam``
            stay the poses before it.
        refine_info: refinement diagnostics (similarity before / after: the views' mean).
    """

    ct_to_world: np.ndarray
    ct_to_cam: list
    reconstruction: object
    registration: object
    bone: object
    cameras: list
    images: list
    ct_source: str = ""
    ct_to_world_refined: np.ndarray | None = None
    refine_info: dict = field(default_factory=dict)

    @property
    def final_ct_to_world(self) -> np.ndarray:
        return self.ct_to_world_refined if self.ct_to_world_refined is not None else self.ct_to_world

    @property
    def final_ct_to_cam(self) -> list:
        """Each view's ``world_to_cam @ final_ct_to_world``."""
        return [np.asarray(c.world_to_cam[0], np.float64) @ self.final_ct_to_world for c in self.cameras]

    @property
    def success(self) -> bool:
        return bool(self.registration.success)


@dataclass
class IndependentViewsRegistration:
    """Result of :func:`register` given several X-rays whose relative poses are unknown
    (``independent_views=True``).

    Attributes:
        ct_to_cam: one ``(4, 4)`` CT (RAS+ world of the file) to camera pose per view
            (NaN for a view the solve refused).
        reconstruction: the :class:`~xrecon.methods.recon.independent_views.IndependentViewsReconstruction`.
        registration: the :class:`~xrecon.methods.recon.independent_views.IndependentViewsCTRegistration`.
        bone: the CT's bone surface used (CT frame); cameras, images: the views.
        ct_source: the CT the poses are of.
    """

    ct_to_cam: list
    reconstruction: object
    registration: object
    bone: object
    cameras: list
    images: list
    ct_source: str = ""

    @property
    def success(self) -> bool:
        return bool(self.registration.success)


def register(image, camera, ct, labels=None, structures=None, refine: bool = False, *, cameras=None,
             sdd_mm: float | None = None, pixel_spacing_mm: float | None = None,
             model: str | Path | None = None, config=None, threshold_hu: float | None = None,
             refine_config=None, label_names=None, multiview_config=None, independent_views: bool = False):
    """Register a CT to one X-ray through the patient-wide reconstruction, or to
    several X-rays whose cameras share one world frame.

    Args:
        image, camera, sdd_mm, pixel_spacing_mm: the X-ray (see :func:`load_xray`); or
            a list of X-rays and a list of cameras (or ``cameras=``), each with its
            ``world_to_cam`` (:func:`load_views`): returns a :class:`MultiViewRegistration`.
        ct: CT path (NIfTI / NRRD / DICOM folder) or :class:`~xrecon.anatomy.volume.Volume`.
        labels: label map (path or Volume) on the CT grid; ``structures`` picks labels.
        refine: also refine the pose by intensity (DRR of the CT against the X-ray; with
            several views in one frame, one loss over all of them).
        model: reconstruction model file (default: the shipped weights).
        config: :class:`xrecon.methods.recon.pipeline.ReconConfig`.
        threshold_hu: bone threshold when no label map is given.
        label_names: names of the label map's ids (see :func:`ct_bone`).
        refine_config: :class:`xrecon.solve.refine.RefineConfig` of the intensity
            refinement (default :func:`recon_refine_config`).
        independent_views: several X-rays whose relative poses are unknown: one CT pose
            per view, returned as an :class:`IndependentViewsRegistration`.
    """
    from xrecon.anatomy.ct_io import read_ct
    from xrecon.anatomy.volume import Volume

    if _several(image):
        if refine and independent_views:
            raise InputError("intensity refinement of views without a shared frame is not available: register "
                             "without refine (--refine), or refine one view at a time")
        imgs, cams = load_views(image, cameras if cameras is not None else camera, sdd_mm=sdd_mm,
                                pixel_spacing_mm=pixel_spacing_mm, independent_views=independent_views)
        ct_vol = ct if isinstance(ct, Volume) else read_ct(ct)
        from xrecon.methods.recon.multiview import MultiViewConfig, reconstruct_images, register_ct_views
        from xrecon.methods.recon.pipeline import ReconConfig

        cfg = config or ReconConfig()
        bone = ct_bone(ct_vol, labels, structures, threshold_hu=threshold_hu, label_names=label_names)
        net, space, _info = _load_model(None if model is None else str(model))
        if independent_views:
            from xrecon.methods.recon.independent_views import (reconstruct_independent_images,
                                                                register_ct_independent)

            irec = reconstruct_independent_images(net, space, imgs, cams, cfg, multiview_config or MultiViewConfig())
            pts, nrm = bone.sample_points(30000, seed=cfg.seed)
            ireg = register_ct_independent(irec, pts, nrm, cfg, ct_mesh=(bone.vertices, bone.faces))
            return IndependentViewsRegistration(ireg.ct_to_cam, irec, ireg, bone, cams, imgs, str(ct_vol.source))
        mrec = reconstruct_images(net, space, imgs, cams, cfg, multiview_config or MultiViewConfig())
        pts, nrm = bone.sample_points(30000, seed=cfg.seed)
        reg = register_ct_views(mrec, pts, nrm, cfg, ct_mesh=(bone.vertices, bone.faces))
        out = MultiViewRegistration(reg.ct_to_world, reg.ct_to_cam, mrec, reg, bone, cams, imgs,
                                    str(ct_vol.source))
        if refine and reg.success:
            out.ct_to_world_refined, out.refine_info = refine_pose_views(
                imgs, cams, ct_vol, reg.ct_to_world, config=refine_config or recon_refine_config())
        return out
    image, camera = _one(image, camera, cameras)
    img, cam = load_xray(image, camera, sdd_mm=sdd_mm, pixel_spacing_mm=pixel_spacing_mm)
    ct_vol = ct if isinstance(ct, Volume) else read_ct(ct)
    from xrecon.methods.recon.pipeline import ReconConfig, reconstruct_image, register_ct_points  # inputs read first

    cfg = config or ReconConfig()
    bone = ct_bone(ct_vol, labels, structures, threshold_hu=threshold_hu, label_names=label_names)
    net, space, _info = _load_model(None if model is None else str(model))
    rec = reconstruct_image(net, space, img, cam, cfg)
    pts, nrm = bone.sample_points(30000, seed=cfg.seed)
    reg = register_ct_points(rec, pts, nrm, cfg, ct_mesh=(bone.vertices, bone.faces))
    out = Registration(reg.ct_to_cam, None, rec, reg, bone, cam[0], img, ct_source=str(ct_vol.source))
    if refine and reg.success:
        out.ct_to_cam_refined, out.refine_info = refine_pose(img, cam[0], ct_vol, reg.ct_to_cam,
                                                             config=refine_config or recon_refine_config())
    return out


def recon_refine_config():
    """Intensity refinement after a registration through the reconstruction: the
    default levels with gradient NCC, which did better than multiscale patch NCC
    on held-out pelvis phantoms (``benchmarks/bench_recon.py``; docs/reconstruction.md)."""
    from xrecon.solve.refine import RefineConfig

    return RefineConfig(similarity="gradient_ncc")


def refine_pose_views(images: list, cameras: list, ct, ct_to_world: np.ndarray, *, config=None,
                      progress: bool = False) -> tuple[np.ndarray | None, dict]:
    """Intensity refinement of ``ct_to_world`` over several X-rays whose cameras
    (each with its ``world_to_cam``) share one world frame
    (:class:`xrecon.solve.refine.MultiViewRefiner`: one loss over all views).
    Returns the refined pose (``None`` when the similarity did not rise) and its
    diagnostics (similarities: the views' mean)."""
    import torch

    from xrecon.solve.refine import MultiViewRefiner

    refiner = MultiViewRefiner(ct, [c[0] for c in cameras], config=config)
    res = refiner.refine([torch.as_tensor(np.asarray(im, np.float32)) for im in images],
                         np.stack([np.asarray(c.world_to_cam[0], np.float64) for c in cameras]), ct_to_world,
                         progress=progress)
    info = {"success": bool(res.success), "reason": res.reason, "similarity_init": float(res.similarity_init),
            "similarity_final": float(res.similarity_final), "n_iterations": int(res.n_iterations),
            "time_s": float(res.time_s), "views": len(images)}
    return (np.asarray(res.world_to_cam, np.float64) if res.success else None), info


def refine_pose(image: np.ndarray, camera: Camera, ct, ct_to_cam: np.ndarray, *, config=None,
                progress: bool = False) -> tuple[np.ndarray | None, dict]:
    """Intensity refinement of ``ct_to_cam`` (:class:`xrecon.solve.refine.IntensityRefiner`,
    whole CT rendered, multiscale NCC, coarse to fine). Returns the refined pose
    (``None`` when the refinement did not improve the similarity) and its diagnostics."""
    import torch

    from xrecon.solve.refine import IntensityRefiner

    refiner = IntensityRefiner(ct, camera[0], config=config)
    res = refiner.refine(torch.as_tensor(np.asarray(image, np.float32)), torch.as_tensor(ct_to_cam),
                         progress=progress)
    info = {"success": bool(res.success), "reason": res.reason, "similarity_init": float(res.similarity_init),
            "similarity_final": float(res.similarity_final), "n_iterations": int(res.n_iterations),
            "time_s": float(res.time_s)}
    return (np.asarray(res.world_to_cam, np.float64) if res.success else None), info
