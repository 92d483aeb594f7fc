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
from xrecon.geometry.camera import Camera, intrinsics_from_detector
from xrecon.geometry import se3

__all__ = ["Camera", "intrinsics_from_detector", "se3"]
