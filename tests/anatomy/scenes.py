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
