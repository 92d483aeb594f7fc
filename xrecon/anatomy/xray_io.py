"""Read X-ray images with their geometry; write images.

:func:`read_xray` returns a float32 ``(H, W)`` image scaled to [0, 1] **with
bone bright** (as in a DRR) and the :class:`~xrecon.geometry.camera.Camera` of
that image (pose = identity unless the geometry gives one: see below).

Formats: PNG (8 / 16 bit), TIFF (integer or float, one page), DICOM (one
frame; ``MONOCHROME1`` is inverted so that bone is bright). RGB(A) files are
accepted only when the three colour channels are equal (a grey image saved as
colour) and fully opaque; anything else raises :class:`InputError`.

Geometry, first found wins for each of ``sdd_mm`` and ``pixel_spacing_mm``:

1. the arguments ``sdd_mm`` / ``pixel_spacing_mm``;
2. a JSON sidecar (``sidecar=`` or, found automatically, ``<image>.json``
   beside ``image.png``, or ``<image file name>.json``) with ``sdd_mm``,
   ``pixel_spacing_mm`` (``dx`` or ``[dx, dy]``), optionally ``K`` (3x3, pixels,
   of the image as stored), ``principal_offset_mm`` and ``world_to_cam``; a
   ``Camera.save`` file is a valid sidecar;
3. DICOM tags: DistanceSourceToDetector (0018,1110) and ImagerPixelSpacing
   (0018,1164), else PixelSpacing (0028,0030) (both stored as row, column).

The pose (``world_to_cam``), first found wins: the JSON's ``world_to_cam``; the
JSON's C-arm angles ``primary_angle_deg``, ``secondary_angle_deg``,
``source_to_isocentre_mm``; the DICOM tags PositionerPrimaryAngle (0018,1510),
PositionerSecondaryAngle (0018,1511) and DistanceSourceToPatient (0018,1111).
Angles give the view's pose in the C-arm's isocentre frame
(:mod:`xrecon.geometry.carm`); :func:`read_geometry` says which one an image has,
without decoding its pixels.

   A zero or empty distance or spacing tag is read as missing, a one-valued
   spacing tag (the standard requires two) as square pixels, each with a note;
   a negative or non-numeric one is refused, naming the tag, unless the value
   comes from 1. or 2.
4. for a DICOM only, what is still missing is assumed: :data:`DEFAULT_SDD_MM`
   and pixels that make the stored image's longest side
   :data:`DEFAULT_DETECTOR_SIDE_MM`; :func:`read_xray_report` says so
   (``geometry["calibrated"]`` false, ``geometry["statement"]``). A PNG / TIFF
   without geometry is refused.

Every geometry file (``--camera`` file or sidecar) is checked field by field
against the one camera JSON schema
(:func:`xrecon.geometry.camera.parse_camera_json`); errors name that file and
the field, not the image.

Preprocessing, in this order (each optional): ``crop_border_px`` on the image
as stored (collimator border) -> flips -> area-average down to the working size
(longest side at most ``max_side``, :data:`MAX_WORKING_SIDE` by default; images
already within it are untouched) -> DICOM rescale slope / intercept and
``MONOCHROME1`` inversion -> ``log_transform`` (raw intensities to line
integrals, ``-log(I / I_max)``, so bone becomes bright) -> ``invert`` ->
collimator strips cut off and lead markers painted out (``find_borders``, on by
default for DICOM: :mod:`xrecon.anatomy.film`) -> min-max scaling to [0, 1] ->
resize to ``size``. A DICOM's VOI LUT (window centre / width, VOI LUT Sequence)
is deliberately not applied: it is a display window, and the networks take the
whole range, dense bright, as a DRR; CR / DX values for presentation are
already log-like, so no log is taken unless asked. The camera follows every geometric
step (crop shifts the principal point, a flip mirrors it, a resize scales K:
:meth:`Camera.cropped` / :meth:`Camera.resized`), so every pixel coordinate a
caller gets back is on the returned image's grid. Averaging raw intensities
before the log is what a detector with larger pixels would have measured.

Size limits: a file whose header declares more than :data:`MAX_PIXELS` pixels
is refused before its pixels are decoded; larger files are decoded once (in
their own integer type) and shrunk in strips, so memory stays near the size of
the decoded file (a 10000 x 10000 16-bit PNG: 200 MB decoded, well under 1 GB
in all; ``benchmarks/bench_large_image.py``).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xrecon.errors import InputError

# xrecon.geometry.camera (and with it torch) is imported where a camera is built, so
# that an unreadable image is refused without loading torch.

log = logging.getLogger(__name__)

#: Largest image decoded, in pixels (height x width): 16384 x 16384 = 268 M.
#: The largest flat-panel detectors are about 4300 x 4300 and film scans about
#: 10000 x 12000; a 16-bit image at the cap decodes to 512 MB. Files declaring
#: more are refused from their header, before decoding; PIL's own
#: decompression-bomb limit is set to this value while reading.
MAX_PIXELS = 16384 * 16384

#: Longest side (pixels) of the image :func:`read_xray` returns by default.
#: Larger images are area-averaged down to it right after reading (camera scaled
#: to match). The networks work at 128-256 px and the intensity refinement at
#: most at a few hundred, so nothing downstream needs more.
MAX_WORKING_SIDE = 2048

#: Rows of the image converted to float64 at a time while shrinking a large image.
_STRIP_ROWS = 512

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom", "")


def read_xray(
    path: str | Path,
    *,
    sidecar: str | Path | None = None,
    sdd_mm: float | None = None,
    pixel_spacing_mm: float | tuple[float, float] | None = None,
    log_transform: bool = False,
    crop_border_px: int | tuple[int, int, int, int] = 0,
    flip_horizontal: bool = False,
    flip_vertical: bool = False,
    invert: bool = False,
    size: int | tuple[int, int] | None = None,
    max_side: int | None = MAX_WORKING_SIDE,
    camera: Camera | None = None,
    find_borders: bool | None = None,
) -> tuple[np.ndarray, Camera]:
    """Read an X-ray and its camera.

    Args:
        path: PNG / TIFF / DICOM file.
        sidecar: geometry JSON (default: ``<image>.json`` when it exists).
        sdd_mm: source-to-detector distance (overrides sidecar and tags).
        pixel_spacing_mm: detector pixel size ``dx`` or ``(dx, dy)`` (columns, rows).
        log_transform: the file holds raw intensities (bone dark); turn them
            into line integrals ``-log(I / I_max)`` (bone bright).
        crop_border_px: pixels removed on every side, or ``(top, bottom, left,
            right)``, counted on the image as stored.
        flip_horizontal, flip_vertical: mirror the image (after the crop). A
            principal point from the geometry is mirrored with it.
        invert: negate the intensities (for an image stored with bone dark that
            needs no log transform).
        size: output ``(H, W)`` or one int for a square image (K scaled to match).
        max_side: longest side of the working image: a larger image (after the
            crop) is area-averaged down to it and its camera scaled to match;
            ``None`` keeps the full resolution (memory grows with the file).
        camera: the :class:`Camera` of the image as stored; when given it is
            used instead of every other geometry source (its size must match).
        find_borders: find collimator strips (cut off) and lead markers (painted
            out) on the image (:mod:`xrecon.anatomy.film`); ``None``: for DICOM
            files only.

    Returns:
        ``image``: float32 ``(H, W)`` in [0, 1], bone bright; ``camera``: its
        :class:`Camera` (batch of one).

    :func:`read_xray_report` returns the same with what was found and assumed.

    Raises:
        InputError: unreadable file, colour image, an image over
            :data:`MAX_PIXELS`, missing or malformed geometry (naming the JSON
            file or DICOM tag it came from), a crop larger than the image, NaN
            pixels, a constant image.
    """
    reading = read_xray_report(path, sidecar=sidecar, sdd_mm=sdd_mm, pixel_spacing_mm=pixel_spacing_mm,
                               log_transform=log_transform, crop_border_px=crop_border_px,
                               flip_horizontal=flip_horizontal, flip_vertical=flip_vertical, invert=invert, size=size,
                               max_side=max_side, camera=camera, find_borders=find_borders)
    if not reading.calibrated:  # the caller gets no report: say it here
        log.warning("%s: %s", path, reading.geometry["statement"])
    return reading.image, reading.camera


@dataclass
class XrayReading:
    """An X-ray as read by :func:`read_xray_report`, with what was found and assumed.

    Attributes:
        image: float32 ``(H, W)`` in [0, 1], bone bright.
        camera: its :class:`Camera` (batch of one), consistent with every crop and resize.
        source: the file read (``""`` for an array).
        geometry: ``calibrated`` (bool), ``sdd_mm``, ``pixel_spacing_mm``, ``sources``
            (field -> where it came from: ``argument``, ``camera file ...``, a DICOM
            tag, or ``assumed (...)``), ``assumed`` (the fields assumed) and
            ``statement`` (:func:`geometry_statement`).
        intensity: what was done to the values (and what deliberately not).
        collimation: the :class:`~xrecon.anatomy.film.CollimatorEdge` strips found.
        crop_px: ``(top, bottom, left, right)`` cut for them, pixels of the image
            after ``crop_border_px`` and flips, at the file's resolution.
        markers: the :class:`~xrecon.anatomy.film.Marker` found and painted out
            (boxes in the same pixels as ``crop_px``, before that crop).
        notes: one line each: tags read as missing or with an assumption, the
            geometry statement when it is assumed, strips and markers found.
    """

    image: np.ndarray
    camera: Camera
    source: str = ""
    geometry: dict = field(default_factory=dict)
    intensity: list[str] = field(default_factory=list)
    collimation: list = field(default_factory=list)
    crop_px: tuple[int, int, int, int] = (0, 0, 0, 0)
    markers: list = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def calibrated(self) -> bool:
        return bool(self.geometry.get("calibrated", True))

    def to_dict(self) -> dict:
        """JSON-ready (no arrays): what was read, found and assumed."""
        geo = {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.geometry.items()}
        return {"source": self.source, "geometry": geo, "intensity": list(self.intensity),
                "collimation": [e.to_dict() for e in self.collimation], "crop_px": list(self.crop_px),
                "markers": [m.to_dict() for m in self.markers], "notes": list(self.notes)}


def read_xray_report(
    path: str | Path,
    *,
    sidecar: str | Path | None = None,
    sdd_mm: float | None = None,
    pixel_spacing_mm: float | tuple[float, float] | None = None,
    log_transform: bool = False,
    crop_border_px: int | tuple[int, int, int, int] = 0,
    flip_horizontal: bool = False,
    flip_vertical: bool = False,
    invert: bool = False,
    size: int | tuple[int, int] | None = None,
    max_side: int | None = MAX_WORKING_SIDE,
    camera: Camera | None = None,
    find_borders: bool | None = None,
) -> XrayReading:
    """:func:`read_xray` (same arguments), returning an :class:`XrayReading`: the
    image, its camera, which geometry was used (calibrated, or assumed and from
    what), what was done to the intensities, and the collimator strips and markers
    found."""
    path = Path(path)
    raw, tags = _read_pixels(path)
    H, W = raw.shape
    notes: list[str] = []
    if camera is not None:
        if (camera.height, camera.width) != (H, W):
            raise InputError(f"the camera given describes a {camera.height}x{camera.width} image but the file is "
                             f"{H}x{W}", path)
        geometry = {"calibrated": True, "sources": {"camera": "Camera object given"}, "assumed": [],
                    "statement": "geometry: calibrated (the camera given)"}
    else:
        tags.setdefault("_hw", (H, W))
        geo = _geometry(path, sidecar, tags, sdd_mm, pixel_spacing_mm)
        camera = _camera(geo, H, W)
        statement = geometry_statement(geo)
        geometry = {"calibrated": not geo["assumed"], "sdd_mm": geo["sdd_mm"],
                    "pixel_spacing_mm": list(geo["pixel_spacing_mm"]), "sources": dict(geo["sources"]),
                    "assumed": list(geo["assumed"]), "statement": statement}
        notes += geo["notes"]
        if geo["assumed"]:
            notes.append(statement)

    top, bottom, left, right = _border(crop_border_px, path)
    if top + bottom >= H or left + right >= W:
        raise InputError(f"crop_border_px {crop_border_px} removes the whole {H}x{W} image", path)
    img = raw[top : H - bottom, left : W - right]
    camera = camera.cropped(top, left, img.shape[0], img.shape[1])
    if flip_horizontal:
        img = img[:, ::-1]
        camera = _mirrored(camera, axis=0)
    if flip_vertical:
        img = img[::-1, :]
        camera = _mirrored(camera, axis=1)

    out_hw = None if size is None else ((int(size), int(size)) if np.isscalar(size) else (int(size[0]), int(size[1])))
    if max_side is not None:
        from xrecon.geometry.camera import size_within

        limit = max([int(max_side), *(out_hw or ())])  # never below the size asked for
        h, w = size_within(img.shape[0], img.shape[1], limit)
        if (h, w) != img.shape:
            log.warning("%s: %dx%d image area-averaged to %dx%d (longest side %d px, read_xray max_side); "
                        "pixel coordinates refer to the smaller grid", path, img.shape[0], img.shape[1], h, w,
                        limit)
            img = _area_downsample(img, h, w)
            camera = camera.resized(h, w)
    shrink = ((H - top - bottom) / camera.height, (W - left - right) / camera.width)

    img = img.astype(np.float64)
    if "rescale" in tags:  # DICOM modality LUT, applied after the shrink (it is affine)
        slope, intercept, mono1_peak = tags["rescale"]
        img = img * slope + intercept
        if mono1_peak is not None:
            img = mono1_peak - img  # MONOCHROME1: low values display bright
    if log_transform:
        peak = img.max()
        if peak <= 0:
            raise InputError("log transform needs positive raw intensities; the image has none", path)
        img = -np.log(np.maximum(img, peak * 1e-6) / peak)
    if invert:
        img = -img
    edges, cut, markers = [], (0, 0, 0, 0), []
    if find_borders is None:
        find_borders = bool(tags.get("_dicom"))
    if find_borders:
        img, camera, edges, cut, markers = _remove_borders(img, camera, shrink, path)
        notes += [f"collimator strip along the {e.side} side, {e.width_px:.1f} px wide (tilt {e.angle_deg:.1f} "
                  "deg): cut off" for e in edges]
        notes += [f"lead marker or burned-in text at rows {m.box[0]}-{m.box[2]}, columns {m.box[1]}-{m.box[3]}: "
                  "painted out" for m in markers]
    lo, hi = img.min(), img.max()
    if hi - lo <= 0:
        raise InputError("image is constant after preprocessing (nothing to see)", path)
    img = (img - lo) / (hi - lo)

    if out_hw is not None:
        out_h, out_w = out_hw
        img = _resize(img, out_h, out_w)
        camera = camera.resized(out_h, out_w)
    intensity = list(tags.get("_intensity", []))
    if log_transform:
        intensity.append("log transform -log(I / I_max): raw intensities to line integrals")
    if invert:
        intensity.append("inverted (invert=True)")
    intensity.append("scaled to [0, 1] (min-max" + (", after the strips and markers were removed)" if find_borders
                                                     else ")"))
    return XrayReading(np.ascontiguousarray(img, dtype=np.float32), camera, str(path), geometry, intensity, edges,
                       cut, markers, notes)


def _remove_borders(img: np.ndarray, camera: Camera, shrink: tuple[float, float], path: Path):
    """Cut the collimator strips off ``img: (h, w)`` (bone bright, the working
    grid) and paint its markers out (:mod:`xrecon.anatomy.film`); the camera is
    cropped with it. Returns the image, camera, the edges, the cut ``(top,
    bottom, left, right)`` and the markers, the last three in pixels at the file's
    resolution (``shrink`` = file pixels per working pixel, rows and columns)."""
    from dataclasses import replace

    from xrecon.anatomy import film

    edges = film.find_collimation(img)
    top, bottom, left, right = film.collimation_crop(edges)
    h, w = img.shape
    if top + bottom >= h - 8 or left + right >= w - 8:
        log.warning("%s: the collimator strips found leave almost nothing of the image; not cut", path)
        edges, (top, bottom, left, right) = [], (0, 0, 0, 0)
    img = img[top : h - bottom, left : w - right]
    camera = camera.cropped(top, left, img.shape[0], img.shape[1])
    markers = film.find_markers(img)
    img = film.paint_out(img, markers)
    sy, sx = shrink
    cut = (round(top * sy), round(bottom * sy), round(left * sx), round(right * sx))
    in_file = [film.Marker((round((m.box[0] + top) * sy), round((m.box[1] + left) * sx),
                            round((m.box[2] + top) * sy), round((m.box[3] + left) * sx)),
                           round(m.area_px * sy * sx)) for m in markers]
    edges = [replace(e, width_px=e.width_px * (sy if e.side in ("top", "bottom") else sx),
                     max_width_px=e.max_width_px * (sy if e.side in ("top", "bottom") else sx)) for e in edges]
    return img, camera, edges, cut, in_file


def write_image(path: str | Path, image: np.ndarray, *, bits: int = 16) -> None:
    """Write a grey image atomically.

    Args:
        path: ``.png`` (8 or 16 bit) or ``.tif`` / ``.tiff`` (float32, exact).
        image: ``(H, W)``; floats are taken as [0, 1] (clipped) for PNG; integer
            arrays are written as they are (uint8 / uint16).
        bits: 8 or 16, for float images written as PNG.
    """
    from xrecon.io import atomic_path

    path = Path(path)
    img = np.asarray(image)
    if img.ndim != 2:
        raise InputError(f"write_image takes an (H, W) image, got shape {img.shape}", path)
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile

        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, img.astype(np.float32) if np.issubdtype(img.dtype, np.floating) else img)
        return
    if suffix != ".png":
        raise InputError(f"cannot write images as '{suffix}' (use .png or .tif)", path)
    if np.issubdtype(img.dtype, np.floating):
        if not np.isfinite(img).all():
            raise InputError("image holds NaN or inf", path)
        if bits not in (8, 16):
            raise InputError(f"bits must be 8 or 16, got {bits}", path)
        scale = 255 if bits == 8 else 65535
        img = np.round(np.clip(img, 0.0, 1.0) * scale).astype(np.uint8 if bits == 8 else np.uint16)
    elif img.dtype not in (np.uint8, np.uint16):
        raise InputError(f"PNG takes uint8 / uint16 or float images, got {img.dtype}", path)
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


def sidecar_candidates(path: str | Path) -> list[Path]:
    """Where a geometry sidecar of ``path`` is looked for: ``img.json``, then ``img.png.json``."""
    path = Path(path)
    return [path.with_suffix(".json"), path.with_name(path.name + ".json")]


# ---------------------------------------------------------------------- pixels
def _read_pixels(path: Path) -> tuple[np.ndarray, dict]:
    """Pixel values ``(H, W)`` as stored (finite; any dtype) and what the file's
    own tags say: ``sdd_mm``, ``pixel_spacing_mm``, a ``_tag_problems`` dict
    (geometry key -> message about a malformed tag, raised only when that tag
    is needed) and, for DICOM, ``rescale`` = ``(slope, intercept, peak)`` with
    ``peak`` the largest rescaled value for ``MONOCHROME1`` (else ``None``)."""
    if not path.is_file():
        raise InputError("no such image file", path)
    suffix = path.suffix.lower()
    if suffix in PIL_SUFFIXES:
        arr, tags = _read_pil(path), {}
    elif suffix in TIFF_SUFFIXES:
        arr, tags = _read_tiff(path), {}
    elif suffix in DICOM_SUFFIXES or _looks_like_dicom(path):
        arr, tags = _read_dicom(path)
    else:
        raise InputError(f"unknown image format '{suffix}' (expected PNG, TIFF or DICOM)", path)
    if arr.ndim == 3:
        arr = _grey_from_colour(arr, path)
    if arr.ndim != 2 or min(arr.shape) < 2:
        raise InputError(f"expected a 2D grey image, got an array of shape {arr.shape}", path)
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InputError(f"image holds {int((~np.isfinite(arr)).sum())} NaN/inf pixel(s)", path)
    return arr, tags


def _check_pixel_count(height: int, width: int, path: Path) -> None:
    """Refuse an image declaring more than :data:`MAX_PIXELS` pixels (before decoding it)."""
    if int(height) * int(width) > MAX_PIXELS:
        raise InputError(
            f"image is {int(height)} x {int(width)} = {int(height) * int(width) / 1e6:.0f} M pixels, over the "
            f"limit of {MAX_PIXELS / 1e6:.0f} M (xrecon.anatomy.xray_io.MAX_PIXELS); downsample it first "
            "(a few thousand pixels a side is plenty: images are read at most "
            f"{MAX_WORKING_SIDE} px a side)",
            path,
        )


def _read_pil(path: Path) -> np.ndarray:
    import warnings

    from PIL import Image, UnidentifiedImageError

    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        # PIL checks the size in the header when opening: make its limit ours
        # and its warning an error, so an oversized file is never decoded.
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                _check_pixel_count(im.height, im.width, path)
                im.load()
                if im.mode == "P":
                    im = im.convert("RGBA")
                arr = np.asarray(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputError(f"image is over the pixel limit of {MAX_PIXELS / 1e6:.0f} M "
                         f"(xrecon.anatomy.xray_io.MAX_PIXELS; PIL: {exc})", path) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image ({exc}); the file may be truncated or not an image", path) from exc
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    return arr


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) > 1:
                raise InputError(f"TIFF holds {len(tif.pages)} pages; expected one image", path)
            page = tif.pages[0]
            shape = tuple(page.shape)
            if len(shape) >= 2:
                rows, cols = shape[-3:-1] if len(shape) >= 3 and shape[-1] in (3, 4) else shape[-2:]
                _check_pixel_count(rows, cols, path)
            arr = page.asarray()
    except InputError:
        raise
    except Exception as exc:  # tifffile raises many types on corrupt files
        raise InputError(f"cannot read TIFF ({type(exc).__name__}: {exc})", path) from exc
    return np.squeeze(arr) if arr.ndim > 2 and 1 in arr.shape[:1] else arr


def _looks_like_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


#: Photometric interpretations read (grey images); any other is refused.
GREY_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")


def _read_dicom(path: Path) -> tuple[np.ndarray, dict]:
    """Stored pixel values (the rescale is applied later, after any shrink, by
    :func:`read_xray`) and the geometry tags; ``tags["_intensity"]`` lists what
    is done to the values and what is deliberately not (the VOI LUT)."""
    ds = _open_dicom(path, defer_size="1 MB")  # pixel data read only when decoded
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise InputError("DICOM holds no pixel data (7FE0,0010): not an image (a report or a header-only file?)",
                         path)
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    if photometric not in GREY_PHOTOMETRIC:
        raise InputError(f"unsupported photometric interpretation {photometric!r}: an X-ray DICOM must be grey "
                         "(MONOCHROME1 or MONOCHROME2)", path)
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(f"DICOM holds {frames} frames; expected one X-ray image", path)
    rows, cols = getattr(ds, "Rows", None), getattr(ds, "Columns", None)
    if rows is not None and cols is not None:
        _check_pixel_count(rows, cols, path)
    try:
        arr = ds.pixel_array  # pydicom keeps BitsStored bits (sign-extended when PixelRepresentation is 1)
    except Exception as exc:  # unsupported compression / truncation
        raise InputError(f"cannot read DICOM pixels ({type(exc).__name__}: {exc})", path) from exc
    try:
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    except (TypeError, ValueError) as exc:
        raise InputError(f"DICOM RescaleSlope / RescaleIntercept are not numbers ({exc})", path) from exc
    intensity = [f"DICOM {getattr(ds, 'Modality', '?')}, {photometric}, {getattr(ds, 'BitsStored', '?')} bits "
                 "stored"]
    if (slope, intercept) != (1.0, 0.0):
        intensity.append(f"modality LUT applied (RescaleSlope {slope:g}, RescaleIntercept {intercept:g})")
    # MONOCHROME1 shows low values bright; a Presentation LUT Shape INVERSE flips the display once more
    inverse = str(getattr(ds, "PresentationLUTShape", "") or "").strip().upper() == "INVERSE"
    invert = (photometric == "MONOCHROME1") != inverse
    if invert:
        intensity.append(("MONOCHROME1" if photometric == "MONOCHROME1" else "Presentation LUT Shape INVERSE")
                         + ": values inverted so that dense is bright")
    voi = [name for name, present in (("WindowCenter / WindowWidth", "WindowCenter" in ds),
                                      ("VOI LUT Sequence", "VOILUTSequence" in ds)) if present]
    if voi:
        intensity.append(f"VOI LUT ({' and '.join(voi)}) not applied: a display window would clip bone or soft "
                         "tissue; the whole range of values is used")
    peak = None
    if invert:
        # the largest rescaled value of the whole stored image (x * slope + intercept is monotonic)
        peak = float((np.array([arr.min(), arr.max()], np.float64) * slope + intercept).max())
    tags = _dicom_geometry_tags(ds)
    tags["rescale"] = (slope, intercept, peak)
    tags["_intensity"] = intensity
    return arr, tags


def _open_dicom(path: Path, **kwargs):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(str(path), **kwargs)
    except InvalidDicomError as exc:
        raise InputError(f"not a DICOM file ({exc})", path) from exc
    except Exception as exc:  # truncated / malformed header
        raise InputError(f"cannot read DICOM ({type(exc).__name__}: {exc})", path) from exc


def _dicom_geometry_tags(ds) -> dict:
    """What a DICOM header says of the geometry: ``sdd_mm``, ``pixel_spacing_mm``,
    ``carm``, ``_tag_problems`` (see :func:`_read_pixels`), ``_notes`` (tags read
    as missing, or read with an assumption), ``_hw`` (Rows, Columns) and ``_dicom``.

    A zero or empty DistanceSourceToDetector or spacing is the writers' way of
    saying "unknown": it is read as missing, with a note. A spacing tag with one
    value (the standard requires two) is read as square pixels, with a note. A
    negative or non-numeric value is a malformed tag (raised when it is needed).
    ImagerPixelSpacing (the detector's) is preferred to PixelSpacing."""
    tags: dict = {"_tag_problems": {}, "_notes": [], "_dicom": True}
    try:
        tags["_hw"] = (int(ds.Rows), int(ds.Columns))
    except (AttributeError, TypeError, ValueError):
        pass
    if "DistanceSourceToDetector" in ds and ds.DistanceSourceToDetector not in (None, ""):
        try:
            sdd = float(ds.DistanceSourceToDetector)
        except (TypeError, ValueError):
            sdd = float("nan")
        if np.isfinite(sdd) and sdd > 0:
            tags["sdd_mm"] = sdd
        elif sdd == 0:
            tags["_notes"].append("DICOM tag DistanceSourceToDetector (0018,1110) is 0: read as missing")
        else:
            tags["_tag_problems"]["sdd_mm"] = (f"DICOM tag DistanceSourceToDetector (0018,1110) is "
                                               f"{ds.DistanceSourceToDetector!r}, not a positive distance in mm")
    _carm_tags(ds, tags)
    single = None
    for keyword, tag in (("ImagerPixelSpacing", "(0018,1164)"), ("PixelSpacing", "(0028,0030)")):
        if keyword not in ds or ds[keyword].value in (None, ""):
            continue
        spacing, problem = _dicom_spacing(ds[keyword].value)
        if spacing is not None and not problem:
            tags["pixel_spacing_mm"] = spacing
            tags["_tag_problems"].pop("pixel_spacing_mm", None)
            break  # ImagerPixelSpacing, when usable, is the detector's; PixelSpacing only as a fallback
        if spacing is not None:  # one value: square pixels, unless the other tag gives two
            single = single or (spacing, f"DICOM tag {keyword} {tag} {problem}")
        elif problem.startswith("holds zero"):
            tags["_notes"].append(f"DICOM tag {keyword} {tag} {problem}: read as missing")
        else:
            tags["_tag_problems"].setdefault("pixel_spacing_mm", f"DICOM tag {keyword} {tag} {problem}")
    if "pixel_spacing_mm" not in tags and single is not None:
        tags["pixel_spacing_mm"] = single[0]
        tags["_notes"].append(single[1])
        tags["_tag_problems"].pop("pixel_spacing_mm", None)
    return tags


#: DICOM keyword, tag and the camera JSON field of each part of a C-arm pose (:mod:`xrecon.geometry.carm`)
CARM_TAGS = (("PositionerPrimaryAngle", "(0018,1510)", "primary_angle_deg"),
             ("PositionerSecondaryAngle", "(0018,1511)", "secondary_angle_deg"),
             ("DistanceSourceToPatient", "(0018,1111)", "source_to_isocentre_mm"))


def _carm_tags(ds, tags: dict) -> None:
    """The C-arm pose of a DICOM header into ``tags["carm"]`` (a
    :class:`~xrecon.geometry.carm.CArmAngles`) when all three tags hold numbers;
    when only some do, or one is malformed, ``tags["_tag_problems"]["carm"]``
    says which (raised only when the pose is needed)."""
    present = [(kw, tag, field) for kw, tag, field in CARM_TAGS if kw in ds and ds[kw].value not in (None, "")]
    if not present:
        return
    if len(present) < len(CARM_TAGS):
        missing = [f"{kw} {tag}" for kw, tag, _ in CARM_TAGS if (kw, tag, _) not in present]
        tags["_tag_problems"]["carm"] = (f"DICOM gives {', '.join(kw for kw, _, _ in present)} but not "
                                         f"{', '.join(missing)}: a C-arm pose needs all three")
        return
    values = {}
    for kw, tag, field in CARM_TAGS:
        try:
            values[field] = float(ds[kw].value)
        except (TypeError, ValueError):
            tags["_tag_problems"]["carm"] = f"DICOM tag {kw} {tag} holds {ds[kw].value!r}, not a number"
            return
    from xrecon.geometry.carm import CArmAngles

    try:
        tags["carm"] = CArmAngles(values["primary_angle_deg"], values["secondary_angle_deg"],
                                  values["source_to_isocentre_mm"])
    except InputError as exc:
        tags["_tag_problems"]["carm"] = f"DICOM positioner tags: {exc.problem}"


def _dicom_spacing(value) -> tuple[tuple[float, float] | None, str]:
    """``(dx, dy)`` (columns, rows) from a DICOM spacing value stored as
    ``[row, column]``, and ``""``; or, for one positive value, ``(v, v)`` and a
    note saying so; or ``None`` and what is wrong with it (``"holds zero ..."``
    for zeros: unknown, read as missing).

    The standard requires two values (VM 2). A file holding one was written by a
    tool that does not follow it; detector pixels are nearly always square, so the
    value is read as both spacings, and the note says so (``--pixel-spacing`` / a
    sidecar overrides it).
    """
    single = isinstance(value, (str, bytes)) or not hasattr(value, "__iter__")  # pydicom: a DSfloat, not a MultiValue
    values = [value] if single else list(value)
    try:
        nums = [float(v) for v in values]
    except (TypeError, ValueError):
        return None, f"holds {value!r}, not numbers"
    if nums and all(v == 0 for v in nums):
        return None, f"holds zero {nums}"
    if not (np.isfinite(nums).all() and all(v > 0 for v in nums)):
        return None, f"holds {nums}, not positive spacings in mm"
    if len(nums) == 1:
        return (nums[0], nums[0]), (f"holds one value ({nums[0]:g}) where the DICOM standard requires two (row, "
                                    f"column): read as square pixels {nums[0]:g} x {nums[0]:g} mm")
    if len(nums) != 2:
        return None, f"holds {len(nums)} values {nums} but the DICOM standard requires two (row, column spacing, mm)"
    row_mm, col_mm = nums
    return (col_mm, row_mm), ""


def _grey_from_colour(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.shape[-1] not in (3, 4):
        raise InputError(f"expected a grey image, got an array of shape {arr.shape}", path)
    if arr.shape[-1] == 4:
        alpha = arr[..., 3]
        if alpha.min() != alpha.max():
            raise InputError("image has transparency; save the X-ray as a grey image", path)
    rgb = arr[..., :3]
    if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise InputError(
            "image is in colour (RGB channels differ); an X-ray must be grey: convert it to a single channel first",
            path,
        )
    return rgb[..., 0]


# ---------------------------------------------------------------------- geometry
def _geometry(path: Path, sidecar, tags: dict, sdd_mm, pixel_spacing_mm) -> dict:
    """The image's geometry; per field, the first found of: the arguments, the
    camera JSON (``sidecar`` or the image's own ``<image>.json``, checked by
    :func:`parse_camera_json`), the DICOM tags.

    Returns ``sdd_mm``, ``pixel_spacing_mm`` and the JSON's ``K``,
    ``principal_offset_mm``, ``world_to_cam``, ``height``, ``width`` (``None``
    where absent), and ``_source``: the file later geometry errors name (the
    JSON when there is one). A missing value is reported against the JSON it
    should have been in, a malformed DICOM tag against the image.
    """
    from xrecon.geometry.camera import parse_camera_json, read_camera_json

    explicit = sidecar is not None
    side_path = Path(sidecar) if explicit else next((p for p in sidecar_candidates(path) if p.is_file()), None)
    side = parse_camera_json(read_camera_json(side_path), side_path) if side_path is not None else {}
    args = {"sdd_mm": _positive("sdd_mm", sdd_mm), "pixel_spacing_mm": _spacing_argument(pixel_spacing_mm)}
    geo: dict = {"_source": side_path or path}
    for key in ("K", "principal_offset_mm", "world_to_cam", "carm", "height", "width"):
        geo[key] = side.get(key)
    # the pose: the JSON's world_to_cam or C-arm angles, else the DICOM positioner tags
    geo["pose_kind"], geo["pose_source"], geo["pose_problem"] = None, None, None
    if geo["world_to_cam"] is not None or geo["carm"] is not None:
        geo["pose_kind"] = "world_to_cam" if geo["world_to_cam"] is not None else "carm"
        geo["pose_source"] = side_path
    elif tags.get("carm") is not None:
        geo["carm"], geo["pose_kind"], geo["pose_source"] = tags["carm"], "carm", path
    elif "carm" in tags.get("_tag_problems", {}):
        geo["pose_problem"] = tags["_tag_problems"]["carm"]
    if args["sdd_mm"] is not None or args["pixel_spacing_mm"] is not None:
        geo["K"] = None  # explicit arguments win over a sidecar's intrinsics
    problems = tags.get("_tag_problems", {})
    missing, bad_tags = [], []
    geo["sources"], geo["assumed"], geo["notes"] = {}, [], list(tags.get("_notes", []))
    tag_names = {"sdd_mm": "DICOM tag DistanceSourceToDetector (0018,1110)",
                 "pixel_spacing_mm": "DICOM tag ImagerPixelSpacing (0018,1164) / PixelSpacing (0028,0030)"}
    for key in ("sdd_mm", "pixel_spacing_mm"):
        found = [(v, src) for v, src in ((args[key], "argument"), (side.get(key), f"camera file {side_path}"),
                                         (tags.get(key), tag_names[key])) if v is not None]
        geo[key] = found[0][0] if found else None
        if found:
            geo["sources"][key] = found[0][1]
        elif key == "sdd_mm" and geo["K"] is not None:
            geo["sources"][key] = f"camera file {side_path} (K)"
        else:
            (bad_tags.append(problems[key]) if key in problems else missing.append(key))
    if bad_tags:
        raise InputError("; ".join(bad_tags) + ": pass the value (CLI: --sdd / --pixel-spacing) or give it in "
                         f"a sidecar {sidecar_candidates(path)[0].name}", path)
    if missing and side_path is not None:
        kind = "camera file" if explicit else f"geometry sidecar of {path.name}"
        need = " and ".join(f"'{k}'" for k in missing) + (" (or 'K')" if "sdd_mm" in missing else "")
        why = (" (its 'K' is not used once sdd_mm= or pixel_spacing_mm= is passed)"
               if side.get("K") is not None and geo["K"] is None else "")
        raise InputError(f"{kind} gives no {need}{why}: add it to this file, or pass sdd_mm= / pixel_spacing_mm= "
                         "(CLI: --sdd / --pixel-spacing)", side_path)
    if missing and tags.get("_dicom") and tags.get("_hw") is not None:
        _assume_geometry(geo, missing, tags["_hw"])
    elif missing:
        raise InputError(
            f"no X-ray geometry ({', '.join(missing)}): pass sdd_mm= / pixel_spacing_mm= "
            f"(CLI: --sdd / --pixel-spacing, or --camera), write a sidecar {sidecar_candidates(path)[0].name}, "
            "or use a DICOM with DistanceSourceToDetector and ImagerPixelSpacing",
            path,
        )
    if geo["carm"] is not None and geo["sdd_mm"] is not None and geo["carm"].source_to_isocentre_mm >= geo["sdd_mm"]:
        raise InputError(f"the source-to-isocentre distance ({geo['carm'].source_to_isocentre_mm:g} mm) is not below "
                         f"the source-to-detector distance ({geo['sdd_mm']:g} mm"
                         + (", assumed: pass --sdd" if "sdd_mm" in geo["assumed"] else "")
                         + "): the isocentre lies between the source and the detector", geo["pose_source"])
    return geo


#: Source-to-detector distance (mm) assumed for a DICOM radiograph that does not
#: give one: the usual source-to-image distance of table and bucky radiography
#: (pelvis, hip, knee, long bones; chest films use 1800 mm).
DEFAULT_SDD_MM = 1000.0

#: Detector extent (mm) that the longest side of a DICOM radiograph without pixel
#: spacing is assumed to span: the largest standard cassette / flat panel,
#: 43 cm. Tied to the image's extent rather than to a pixel size, it gives the
#: same field of view whatever resolution the file was saved at.
DEFAULT_DETECTOR_SIDE_MM = 430.0


def _assume_geometry(geo: dict, missing: list[str], hw: tuple[int, int]) -> None:
    """Fill ``missing`` geometry fields of a DICOM radiograph with the documented
    defaults (:data:`DEFAULT_SDD_MM`, :data:`DEFAULT_DETECTOR_SIDE_MM` over the
    stored image's longest side, square pixels) and record them in ``geo``."""
    for key in missing:
        if key == "sdd_mm":
            geo["sdd_mm"] = DEFAULT_SDD_MM
            geo["sources"][key] = f"assumed (xrecon default {DEFAULT_SDD_MM:g} mm)"
        else:
            dx = DEFAULT_DETECTOR_SIDE_MM / max(hw)
            geo["pixel_spacing_mm"] = (dx, dx)
            geo["sources"][key] = (f"assumed (xrecon default: the image's longest side, {max(hw)} px, spans "
                                   f"{DEFAULT_DETECTOR_SIDE_MM:g} mm)")
        geo["assumed"].append(key)


def geometry_statement(geo: dict) -> str:
    """One sentence saying which geometry an image was read with, and, when some
    of it was assumed, what that means and how to give it (``geo``: from
    :func:`read_geometry`)."""
    dx, dy = geo["pixel_spacing_mm"]
    parts = [f"source-to-detector {geo['sdd_mm']:g} mm from {geo['sources'].get('sdd_mm', '?')}"
             if geo.get("sdd_mm") is not None else f"intrinsics K from {geo['sources'].get('sdd_mm', '?')}",
             f"pixels {dx:.4g} x {dy:.4g} mm from {geo['sources'].get('pixel_spacing_mm', '?')}"]
    if not geo.get("assumed"):
        return "geometry: calibrated (" + "; ".join(parts) + ")"
    return ("geometry: ASSUMED, not calibrated (" + "; ".join(parts) + "): the shape is up to scale and its "
            "distance from the source is not measured; give --sdd and --pixel-spacing (API: sdd_mm=, "
            "pixel_spacing_mm=) or a camera JSON for a calibrated result")


def read_geometry(path: str | Path, *, sidecar: str | Path | None = None, sdd_mm: float | None = None,
                  pixel_spacing_mm=None) -> dict:
    """The geometry :func:`read_xray` would use for ``path`` (same arguments), without
    decoding its pixels (a DICOM's header only).

    Returns a dict with ``sdd_mm``, ``pixel_spacing_mm``, ``K``, ``principal_offset_mm``,
    ``height``, ``width`` (``None`` where absent) and the pose: ``pose_kind``
    (``"world_to_cam"``: the JSON's matrix, in whatever frame the JSON's author
    chose; ``"carm"``: C-arm angles, the isocentre frame of
    :mod:`xrecon.geometry.carm`; ``None``: no pose), ``pose_source`` (the file it
    came from), ``world_to_cam`` / ``carm`` and ``pose_problem`` (why positioner
    tags that are present give no pose, else ``None``).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such image file", path)
    suffix = path.suffix.lower()
    tags: dict = {}
    if suffix not in PIL_SUFFIXES + TIFF_SUFFIXES and (suffix in DICOM_SUFFIXES or _looks_like_dicom(path)):
        tags = _dicom_geometry_tags(_open_dicom(path, stop_before_pixels=True))
    return _geometry(path, sidecar, tags, sdd_mm, pixel_spacing_mm)


def _positive(name: str, value) -> float | None:
    """An argument that must be a positive finite number (``None`` passes)."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not (np.isfinite(v) and v > 0):
        raise InputError(f"{name} must be a positive number (mm), got {value!r}")
    return v


def _spacing_argument(value) -> tuple[float, float] | None:
    """``pixel_spacing_mm=`` as ``(dx, dy)``: one positive number or two."""
    if value is None:
        return None
    if np.isscalar(value):
        v = _positive("pixel_spacing_mm", value)
        return v, v
    vals = list(np.asarray(value, dtype=object).reshape(-1))
    if len(vals) != 2:
        raise InputError(f"pixel_spacing_mm must be one number dx or two (dx, dy), got {value!r}")
    return _positive("pixel_spacing_mm", vals[0]), _positive("pixel_spacing_mm", vals[1])


def _camera(geo: dict, height: int, width: int) -> Camera:
    """The :class:`Camera` of the ``height x width`` image as stored, from :func:`_geometry`."""
    from xrecon.geometry.camera import Camera

    if geo.get("height") is not None and (geo["height"], geo["width"]) != (height, width):
        raise InputError(f"camera JSON describes a {geo['height']}x{geo['width']} image but the image file is "
                         f"{height}x{width}", geo["_source"])
    if geo.get("K") is not None:
        camera = Camera(geo["K"], np.eye(4), height, width, geo["pixel_spacing_mm"])
    else:
        camera = Camera.from_detector(geo["sdd_mm"], geo["pixel_spacing_mm"], height, width,
                                      principal_offset_mm=geo.get("principal_offset_mm") or (0.0, 0.0))
    if geo.get("world_to_cam") is not None:
        camera = camera.with_pose(geo["world_to_cam"])
    elif geo.get("carm") is not None:
        camera = camera.with_pose(geo["carm"].world_to_cam())
    return camera


def _border(crop, path: Path) -> tuple[int, int, int, int]:
    vals = (crop,) * 4 if np.isscalar(crop) else tuple(crop)
    if len(vals) != 4 or any(int(v) != v or v < 0 for v in vals):
        raise InputError(f"crop_border_px must be one int >= 0 or (top, bottom, left, right), got {crop}", path)
    return tuple(int(v) for v in vals)


def _mirrored(camera: Camera, axis: int) -> Camera:
    """Camera of the image mirrored along u (axis 0) or v (axis 1): the principal
    point moves to ``size - 1 - c``; focal lengths stay positive."""
    from xrecon.geometry.camera import Camera

    K = camera.K.clone()
    extent = camera.width if axis == 0 else camera.height
    K[:, axis, 2] = extent - 1 - K[:, axis, 2]
    return Camera(K, camera.world_to_cam, camera.height, camera.width, camera.pixel_spacing_mm)


def _resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area averaging when shrinking, bilinear when growing (pixel-centre aligned,
    as :meth:`Camera.resized` assumes)."""
    import cv2

    if height < 1 or width < 1:
        raise InputError(f"size must be positive, got {(height, width)}")
    shrink = height < img.shape[0] or width < img.shape[1]
    return cv2.resize(img.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _area_downsample(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Area average of ``img: (H, W)`` (any real dtype, any strides) onto a
    ``height x width`` grid no larger than it, as float64 (pixel-centre aligned,
    as :meth:`Camera.resized` assumes).

    Area averaging is separable: columns are averaged strip by strip
    (:data:`_STRIP_ROWS` rows converted to float64 at a time, so no float copy of
    the full image is made), then rows.
    """
    import cv2

    H, W = img.shape
    cols = np.empty((H, width), np.float64)
    for r0 in range(0, H, _STRIP_ROWS):
        strip = np.ascontiguousarray(img[r0 : r0 + _STRIP_ROWS], dtype=np.float64)
        cols[r0 : r0 + len(strip)] = strip if width == W else cv2.resize(
            strip, (width, len(strip)), interpolation=cv2.INTER_AREA).reshape(len(strip), width)
    if height == H:
        return cols
    return cv2.resize(cols, (width, height), interpolation=cv2.INTER_AREA).reshape(height, width)
