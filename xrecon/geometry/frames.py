"""Patient frames. xrecon's world frame is RAS+ millimetres (nibabel's).

LPS+ (DICOM, ITK, SimpleITK) differs by a half-turn about the z axis:
``x_ras = diag(-1, -1, 1) x_lps``. Convert once, at the I/O boundary.
"""
from __future__ import annotations

import torch

WORLD_FRAME = "RAS+ mm"

#: Maps LPS+ coordinates to RAS+ (and back: it is its own inverse).
LPS_TO_RAS = torch.diag(torch.tensor([-1.0, -1.0, 1.0, 1.0], dtype=torch.float64))
RAS_TO_LPS = LPS_TO_RAS


def affine_lps_to_ras(affine_lps: torch.Tensor) -> torch.Tensor:
    """A voxel-to-LPS affine ``(4, 4)`` as a voxel-to-RAS affine."""
    return LPS_TO_RAS.to(torch.as_tensor(affine_lps).dtype) @ torch.as_tensor(affine_lps)
