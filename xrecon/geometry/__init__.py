"""Geometry: the one camera convention, SE(3) helpers, patient frames.

THE CONVENTION (everything in xrecon follows it; docstrings link here)
=====================================================================

* World frame: the CT's own patient frame in millimetres, **RAS+** (nibabel's
  convention: +x toward the patient's right, +y anterior, +z superior). Files in
  LPS+ (DICOM, ITK) are converted at the I/O boundary
  (:mod:`xrecon.geometry.frames`). Every output file names the frame it is in.
* Camera frame (OpenCV pinhole): X-ray source at the origin, +z toward the
  detector, +x = image right (increasing column u), +y = image down
  (increasing row v). The detector plane is z = sdd_mm.
* Pixels: ``(u, v) = (column, row)``; integer values are pixel centres; row 0
  is the first row of the image array ``img[..., v, u]``.
* Matrices act on column vectors: ``x_cam = R @ x_world + t``. A pose is always
  a 4x4 ``world_to_cam`` (or ``<a>_to_<b>``) matrix; transforms are named after
  their two frames and composed right to left: ``ct_to_cam = world_to_cam @ ct_to_world``.
* Intrinsics ``K = [[sdd/dx, 0, cx], [0, sdd/dy, cy], [0, 0, 1]]`` with dx, dy the
  detector pixel spacing in mm: exactly what ``cv2.solvePnP`` and poselib expect.
"""
import importlib

__all__ = ["Camera", "intrinsics_from_detector", "se3"]

# Loaded on first use (PEP 562), so that importing a light module of this
# package (or ``xrecon.api``) does not import torch.
_LAZY = {"Camera": "xrecon.geometry.camera", "intrinsics_from_detector": "xrecon.geometry.camera",
         "se3": "xrecon.geometry.se3"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__.endswith("." + name) else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
