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

   A single-valued spacing tag (the standard requires two, row and column) is
   refused, naming the tag, unless the spacing comes from 1. or 2.

Every geometry file (``--camera`` file or sidecar) is checked field by field
against the one camera JSON schema
(:func:`xrecon.geometry.camera.parse_camera_json`); errors name that file and
the field, not the image.

Preprocessing, in this order (each optional): ``crop_border_px`` on the image
as stored (collimator border) -> flips -> area-average down to the working size
(longest side at most ``max_side``, :data:`MAX_WORKING_SIDE` by default; images
already within it are untouched) -> DICOM rescale slope / intercept and
``MONOCHROME1`` inversion -> ``log_transform`` (raw intensities to line
integrals, ``-log(I / I_max)``, so bone becomes bright) -> ``invert`` -> min-max
scaling to [0, 1] -> resize to ``size``. The camera follows every geometric
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

    Returns:
        ``image``: float32 ``(H, W)`` in [0, 1], bone bright; ``camera``: its
        :class:`Camera` (batch of one).

    Raises:
        InputError: unreadable file, colour image, an image over
            :data:`MAX_PIXELS`, missing or malformed geometry (naming the JSON
            file or DICOM tag it came from), a crop larger than the image, NaN
            pixels, a constant image.
    """
    path = Path(path)
    raw, tags = _read_pixels(path)
    H, W = raw.shape
    if camera is not None:
        if (camera.height, camera.width) != (H, W):
            raise InputError(f"the camera given describes a {camera.height}x{camera.width} image but the file is "
                             f"{H}x{W}", path)
    else:
        camera = _camera(_geometry(path, sidecar, tags, sdd_mm, pixel_spacing_mm), H, W)

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
    lo, hi = img.min(), img.max()
    if hi - lo <= 0:
        raise InputError("image is constant after preprocessing (nothing to see)", path)
    img = (img - lo) / (hi - lo)

    if out_hw is not None:
        out_h, out_w = out_hw
        img = _resize(img, out_h, out_w)
        camera = camera.resized(out_h, out_w)
    return np.ascontiguousarray(img, dtype=np.float32), camera


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


def _read_dicom(path: Path) -> tuple[np.ndarray, dict]:
    """Stored pixel values (the rescale is applied later, after any shrink, by
    :func:`read_xray`) and the geometry tags."""
    ds = _open_dicom(path, defer_size="1 MB")  # pixel data read only when decoded
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(f"DICOM holds {frames} frames; expected one X-ray image", path)
    rows, cols = getattr(ds, "Rows", None), getattr(ds, "Columns", None)
    if rows is not None and cols is not None:
        _check_pixel_count(rows, cols, path)
    try:
        arr = ds.pixel_array
    except Exception as exc:  # missing pixel data / unsupported compression / truncation
        raise InputError(f"cannot read DICOM pixels ({type(exc).__name__}: {exc})", path) from exc
    try:
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    except (TypeError, ValueError) as exc:
        raise InputError(f"DICOM RescaleSlope / RescaleIntercept are not numbers ({exc})", path) from exc
    peak = None
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        # the largest rescaled value of the whole stored image (x * slope + intercept is monotonic)
        peak = float((np.array([arr.min(), arr.max()], np.float64) * slope + intercept).max())
    tags = _dicom_geometry_tags(ds)
    tags["rescale"] = (slope, intercept, peak)
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
    ``carm`` and ``_tag_problems`` (see :func:`_read_pixels`)."""
    tags: dict = {"_tag_problems": {}}
    if "DistanceSourceToDetector" in ds:
        try:
            sdd = float(ds.DistanceSourceToDetector)
        except (TypeError, ValueError):
            sdd = float("nan")
        if np.isfinite(sdd) and sdd > 0:
            tags["sdd_mm"] = sdd
        else:
            tags["_tag_problems"]["sdd_mm"] = (f"DICOM tag DistanceSourceToDetector (0018,1110) is "
                                               f"{ds.DistanceSourceToDetector!r}, not a positive distance in mm")
    _carm_tags(ds, tags)
    for keyword, tag in (("ImagerPixelSpacing", "(0018,1164)"), ("PixelSpacing", "(0028,0030)")):
        if keyword not in ds or ds[keyword].value in (None, ""):
            continue
        spacing, problem = _dicom_spacing(ds[keyword].value)
        if spacing is not None:
            tags["pixel_spacing_mm"] = spacing
        else:
            tags["_tag_problems"]["pixel_spacing_mm"] = f"DICOM tag {keyword} {tag} {problem}"
        break  # ImagerPixelSpacing, when present, is the detector's; PixelSpacing only as a fallback
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
    ``[row, column]``, or ``None`` and what is wrong with it.

    A single value is refused rather than taken as isotropic: the standard
    requires two (VM 2), so a file holding one was written by a tool that does
    not follow it, and nothing says whether the value is the row or the column
    spacing. Detector pixels are nearly always square, but a wrong guess would
    silently scale one image axis; ``--pixel-spacing`` / a sidecar overrides it.
    """
    single = isinstance(value, (str, bytes)) or not hasattr(value, "__iter__")  # pydicom: a DSfloat, not a MultiValue
    values = [value] if single else list(value)
    try:
        nums = [float(v) for v in values]
    except (TypeError, ValueError):
        return None, f"holds {value!r}, not numbers"
    if len(nums) != 2:
        return None, (f"holds {len(nums)} value(s) {nums} but the DICOM standard requires two (row, column "
                      "spacing, mm)")
    row_mm, col_mm = nums
    if not (np.isfinite(nums).all() and row_mm > 0 and col_mm > 0):
        return None, f"holds {nums}, not two positive spacings in mm"
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
    for key in ("sdd_mm", "pixel_spacing_mm"):
        geo[key] = next((v for v in (args[key], side.get(key), tags.get(key)) if v is not None), None)
        if geo[key] is None and not (key == "sdd_mm" and geo["K"] is not None):
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
    if missing:
        raise InputError(
            f"no X-ray geometry ({', '.join(missing)}): pass sdd_mm= / pixel_spacing_mm= "
            f"(CLI: --sdd / --pixel-spacing, or --camera), write a sidecar {sidecar_candidates(path)[0].name}, "
            "or use a DICOM with DistanceSourceToDetector and ImagerPixelSpacing",
            path,
        )
    if geo["carm"] is not None and geo["sdd_mm"] is not None and geo["carm"].source_to_isocentre_mm >= geo["sdd_mm"]:
        raise InputError(f"the source-to-isocentre distance ({geo['carm'].source_to_isocentre_mm:g} mm) is not below "
                         f"the source-to-detector distance ({geo['sdd_mm']:g} mm): the isocentre lies between the "
                         "source and the detector", geo["pose_source"])
    return geo


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
