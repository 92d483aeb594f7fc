"""Small synthetic volumes with known geometry for the anatomy tests."""
from __future__ import annotations

import numpy as np

from xrecon.anatomy.volume import Volume


def ellipsoid_volume(shape=(40, 36, 30), spacing=(1.0, 1.2, 1.5), radii_mm=(14.0, 11.0, 13.0), affine=None) -> Volume:
    """A CT-like volume: an ellipsoidal 'bone' (1000 HU) in water (0 HU), centred in the grid."""
    if affine is None:
        affine = np.diag([*spacing, 1.0])
        affine[:3, 3] = (-10.0, 20.0, -30.0)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(float)
    centre = (np.array(shape) - 1) / 2
    r = ((idx - centre) * np.array(spacing)) / np.array(radii_mm)
    inside = (r**2).sum(-1) <= 1.0
    data = np.where(inside, 1000.0, 0.0).astype(np.float32)
    return Volume(data, affine, "<ellipsoid>")


def write_dicom_series(volume: Volume, folder) -> list:
    """Write ``volume`` (integer-valued HU) as a CT DICOM series, one file per k slice,
    with SimpleITK. Returns the file paths."""
    import time
    from pathlib import Path

    import SimpleITK as sitk

    from xrecon.anatomy.ct_io import volume_to_sitk

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    img = volume_to_sitk(volume.with_data(np.round(volume.data).astype(np.int16)))
    direction = img.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.2.1125." + time.strftime("%Y%m%d%H%M%S")
    paths = []
    for k in range(img.GetDepth()):
        s = img[:, :, k]
        for tag, value in [
            ("0008|0060", "CT"),
            ("0020|000d", uid + ".1"),
            ("0020|000e", uid + ".2"),
            ("0020|0037", "\\".join(f"{d:.9f}" for d in (direction[0], direction[3], direction[6], direction[1], direction[4], direction[7]))),
            ("0020|0032", "\\".join(f"{p:.6f}" for p in img.TransformIndexToPhysicalPoint((0, 0, k)))),
            ("0020|0013", str(k + 1)),
            ("0018|0050", f"{img.GetSpacing()[2]:.6f}"),
            ("0028|1052", "0"),
            ("0028|1053", "1"),
        ]:
            s.SetMetaData(tag, value)
        path = folder / f"slice_{k:04d}.dcm"
        writer.SetFileName(str(path))
        writer.Execute(s)
        paths.append(path)
    return paths
