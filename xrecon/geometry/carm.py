"""C-arm geometry from its positioner angles: each view's ``world_to_cam`` about a
shared isocentre (DICOM XA positioner, PS3.3 C.8.7.5).

THE ISOCENTRE FRAME (the ``world`` of every view posed from angles)
===================================================================

* Origin: the C-arm's isocentre (the point every view's principal ray passes
  through). Axes: the patient's, **RAS+** as everywhere in xrecon
  (:mod:`xrecon.geometry`): +x toward the patient's right, +y anterior, +z
  superior; millimetres. Views share this frame only while the patient does not
  move on the table between shots.
* ``primary_angle_deg`` (DICOM PositionerPrimaryAngle, 0018,1510): rotation of
  the C-arm about the patient's long axis (+z). At 0 the **detector** is
  anterior of the patient and the source posterior (a PA beam); +90 puts the
  detector at the patient's left (LAO 90), -90 at the right (RAO 90).
* ``secondary_angle_deg`` (PositionerSecondaryAngle, 0018,1511): tilt toward the
  head; +90 puts the detector superior (cranial), -90 inferior (caudal).
* The unit vector from the isocentre to the detector is (RAS+)

      d = (-sin(p) cos(s),  cos(p) cos(s),  sin(s))

  with ``p``, ``s`` the primary and secondary angles: the rotation
  ``C = Rz(p) @ Rx(s)`` (right-handed rotations about the world's z and x axes)
  applied to the base direction (0, 1, 0).
* ``source_to_isocentre_mm`` (DistanceSourceToPatient, 0018,1111): the source
  sits at ``-source_to_isocentre_mm * d``; the detector at ``sdd_mm`` from the
  source (DistanceSourceToDetector, 0018,1110), on the camera's intrinsics.
* **Image axes.** At both angles 0 the camera (OpenCV, :mod:`xrecon.geometry`)
  has +x (image right) = the patient's right, +y (image down) = inferior, +z
  (beam, source to detector) = anterior: the image *as seen from the source*,
  head up. The C-arm's rotation carries these axes with it (no rotation of the
  detector about the beam). A detector that stores its image as seen from
  behind it (mirrored: patient's left on the image right in that PA view) needs
  the image flipped left-right first (``read_xray(..., flip_horizontal=True)``).

So ``world_to_cam = [[R, t], [0, 1]]`` with ``R = B^T C^T`` (``B``'s columns the
base camera axes in the world) and ``t = (0, 0, source_to_isocentre_mm)``: the
isocentre lies on the principal ray, ``source_to_isocentre_mm`` in front of the
source.

xrecon's simulator uses its own angle, ``lao_deg`` (:mod:`xrecon.sim.poses`: 0 =
source anterior); its view ``(lao_deg, cranial_deg)`` is this module's
``(lao_deg + 180, -cranial_deg)`` (tests/geometry/test_carm.py pins it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xrecon.errors import InputError

ISOCENTRE_FRAME = ("isocentre: origin at the C-arm's isocentre, axes the patient's RAS+ (+x right, +y anterior, "
                   "+z superior), mm; views posed from their C-arm angles (primary / secondary)")

#: columns: the camera's x, y, z axes in the world at both angles 0 (image right = patient right,
#: image down = inferior, beam = anterior)
BASE_CAMERA_AXES = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class CArmAngles:
    """One view's C-arm geometry (module docstring).

    Attributes:
        primary_angle_deg: LAO (+) / RAO (-) rotation about the patient's long axis.
        secondary_angle_deg: cranial (+) / caudal (-) tilt.
        source_to_isocentre_mm: distance from the X-ray source to the isocentre (> 0).
    """

    primary_angle_deg: float
    secondary_angle_deg: float
    source_to_isocentre_mm: float

    def __post_init__(self):
        for name in ("primary_angle_deg", "secondary_angle_deg", "source_to_isocentre_mm"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating, np.integer)) and not isinstance(v, bool)
                    and np.isfinite(v)):
                raise InputError(f"C-arm geometry: {name} must be a finite number, got {v!r}")
        if not -180.0 <= self.primary_angle_deg <= 180.0:
            raise InputError(f"C-arm geometry: primary_angle_deg must lie in [-180, 180] (DICOM), got "
                             f"{self.primary_angle_deg}")
        if not -90.0 <= self.secondary_angle_deg <= 90.0:
            raise InputError(f"C-arm geometry: secondary_angle_deg must lie in [-90, 90] (DICOM), got "
                             f"{self.secondary_angle_deg}")
        if not self.source_to_isocentre_mm > 0:
            raise InputError(f"C-arm geometry: source_to_isocentre_mm must be > 0, got "
                             f"{self.source_to_isocentre_mm}")

    def world_to_cam(self) -> np.ndarray:
        """``(4, 4)`` isocentre frame -> this view's camera."""
        return carm_world_to_cam(self.primary_angle_deg, self.secondary_angle_deg, self.source_to_isocentre_mm)

    def to_dict(self) -> dict:
        return {"primary_angle_deg": float(self.primary_angle_deg),
                "secondary_angle_deg": float(self.secondary_angle_deg),
                "source_to_isocentre_mm": float(self.source_to_isocentre_mm)}


def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def carm_rotation(primary_angle_deg: float, secondary_angle_deg: float) -> np.ndarray:
    """``C (3, 3)``: the C-arm's rotation from its base position (both angles 0), world frame."""
    return _rz(np.radians(primary_angle_deg)) @ _rx(np.radians(secondary_angle_deg))


def detector_direction(primary_angle_deg: float, secondary_angle_deg: float) -> np.ndarray:
    """``(3,)`` unit vector from the isocentre toward the detector (the beam's direction), RAS+."""
    return carm_rotation(primary_angle_deg, secondary_angle_deg) @ np.array([0.0, 1.0, 0.0])


def carm_world_to_cam(primary_angle_deg: float, secondary_angle_deg: float,
                      source_to_isocentre_mm: float) -> np.ndarray:
    """``(4, 4)`` world_to_cam of a C-arm view, world = the isocentre frame (module docstring)."""
    R = (carm_rotation(primary_angle_deg, secondary_angle_deg) @ BASE_CAMERA_AXES).T
    out = np.eye(4)
    out[:3, :3] = R
    out[:3, 3] = [0.0, 0.0, float(source_to_isocentre_mm)]
    return out
