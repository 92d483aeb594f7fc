"""Read X-ray images with their geometry; write images.

:func:`read_xray` returns a float32 ``(H, W)`` image scaled to [0, 1] **with
bone bright** (as in a DRR) and the :class:`~xrecon.geometry.camera.Camera` of
that image (pose = identity unless the sidecar gives ``world_to_cam``).

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

Preprocessing, in this order (each optional): ``crop_border_px`` on the image
as stored (collimator border) -> flips -> ``log_transform`` (raw intensities to
line integrals, ``-log(I / I_max)``, so bone becomes bright) -> ``invert`` ->
min-max scaling to [0, 1] -> resize to ``size``. The camera follows every
geometric step (crop shifts the principal point, a flip mirrors it, a resize
scales K: :meth:`Camera.cropped` / :meth:`Camera.resized`).
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

    Returns:
        ``image``: float32 ``(H, W)`` in [0, 1], bone bright; ``camera``: its
        :class:`Camera` (batch of one).

    Raises:
        InputError: unreadable file, colour image, missing geometry, a crop
            larger than the image, NaN pixels, a constant image.
    """
    path = Path(path)
    raw, tags = _read_pixels(path)
    H, W = raw.shape
    from xrecon.geometry.camera import Camera

    geo = _geometry(path, sidecar, tags, sdd_mm, pixel_spacing_mm)
    if geo.get("K") is not None:
        K = np.asarray(geo["K"], dtype=np.float64)
        if K.shape != (3, 3):
            raise InputError(f"sidecar K must be 3x3, got shape {K.shape}", geo["_source"])
        h_w = geo.get("height"), geo.get("width")
        if h_w != (None, None) and tuple(int(x) for x in h_w) != (H, W):
            raise InputError(f"sidecar describes a {h_w[0]}x{h_w[1]} image but the file is {H}x{W}", geo["_source"])
        camera = Camera(K, np.eye(4), H, W, geo["pixel_spacing_mm"])
    else:
        camera = Camera.from_detector(geo["sdd_mm"], geo["pixel_spacing_mm"], H, W,
                                      principal_offset_mm=tuple(geo.get("principal_offset_mm", (0.0, 0.0))))
    if geo.get("world_to_cam") is not None:
        camera = camera.with_pose(np.asarray(geo["world_to_cam"], dtype=np.float64))

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

    img = img.astype(np.float64)
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

    if size is not None:
        out_h, out_w = (size, size) if np.isscalar(size) else (int(size[0]), int(size[1]))
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
    """Pixel values ``(H, W)`` (finite, bone bright unless the file holds raw
    intensities) and geometry found in the file's own tags."""
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


def _read_pil(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "P":
                im = im.convert("RGBA")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"cannot read image ({exc}); the file may be truncated or not an image", path) from exc
    return arr


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.pages) > 1:
                raise InputError(f"TIFF holds {len(tif.pages)} pages; expected one image", path)
            arr = tif.pages[0].asarray()
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
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
        arr = ds.pixel_array
    except InvalidDicomError as exc:
        raise InputError(f"not a DICOM file ({exc})", path) from exc
    except Exception as exc:  # missing pixel data / unsupported compression / truncation
        raise InputError(f"cannot read DICOM pixels ({type(exc).__name__}: {exc})", path) from exc
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(f"DICOM holds {frames} frames; expected one X-ray image", path)
    arr = arr.astype(np.float64) * float(getattr(ds, "RescaleSlope", 1) or 1) + float(getattr(ds, "RescaleIntercept", 0) or 0)
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        arr = arr.max() - arr  # MONOCHROME1: low values display bright
    tags: dict = {}
    if "DistanceSourceToDetector" in ds:
        tags["sdd_mm"] = float(ds.DistanceSourceToDetector)
    spacing = ds.get("ImagerPixelSpacing") or ds.get("PixelSpacing")
    if spacing is not None:
        row_mm, col_mm = (float(s) for s in spacing)
        tags["pixel_spacing_mm"] = (col_mm, row_mm)
    return arr, tags


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
    side: dict = {}
    side_path = Path(sidecar) if sidecar is not None else next((p for p in sidecar_candidates(path) if p.is_file()), None)
    if side_path is not None:
        try:
            side = json.loads(side_path.read_text())
        except OSError as exc:
            raise InputError(f"cannot read geometry sidecar ({exc.strerror or exc})", side_path) from exc
        except json.JSONDecodeError as exc:
            raise InputError(f"geometry sidecar is not valid JSON ({exc.msg}, line {exc.lineno})", side_path) from exc
        if not isinstance(side, dict):
            raise InputError("geometry sidecar must be a JSON object", side_path)
    geo = {"_source": side_path or path}
    for key, arg in (("sdd_mm", sdd_mm), ("pixel_spacing_mm", pixel_spacing_mm)):
        geo[key] = arg if arg is not None else side.get(key, tags.get(key))
    for key in ("K", "principal_offset_mm", "world_to_cam", "height", "width"):
        if key in side:
            geo[key] = side[key]
    if sdd_mm is not None or pixel_spacing_mm is not None:
        geo.pop("K", None)  # explicit arguments win over a sidecar's intrinsics
    if geo["pixel_spacing_mm"] is None or (geo["sdd_mm"] is None and geo.get("K") is None):
        missing = [k for k in ("sdd_mm", "pixel_spacing_mm") if geo[k] is None]
        raise InputError(
            f"no X-ray geometry ({', '.join(missing)}): pass sdd_mm= / pixel_spacing_mm= "
            f"(CLI: --sdd / --pixel-spacing, or --camera), write a sidecar {sidecar_candidates(path)[0].name}, "
            "or use a DICOM with DistanceSourceToDetector and ImagerPixelSpacing",
            path,
        )
    sp = geo["pixel_spacing_mm"]
    try:
        sp = (float(sp), float(sp)) if np.isscalar(sp) else (float(sp[0]), float(sp[1]))
        sdd = None if geo["sdd_mm"] is None else float(geo["sdd_mm"])
    except (TypeError, ValueError, IndexError) as exc:
        raise InputError(f"bad geometry values ({exc})", geo["_source"]) from exc
    if min(sp) <= 0 or (sdd is not None and sdd <= 0):
        raise InputError(f"sdd_mm ({sdd}) and pixel_spacing_mm ({sp}) must be positive", geo["_source"])
    geo["pixel_spacing_mm"], geo["sdd_mm"] = sp, sdd
    return geo


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
