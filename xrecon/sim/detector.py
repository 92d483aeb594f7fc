"""Detector presets: C-arm geometries as :class:`~xrecon.geometry.Camera` objects.

``deepfluoro`` is the Siemens CIOS Fusion geometry of the DeepFluoro data
(1536 x 1536 pixels of 0.194 mm, source-to-detector distance 1020 mm).
``cpu128`` / ``cpu256`` are the same detector binned to 128 / 256 pixels
(pixels of 2.328 / 1.164 mm), the sizes that train on a CPU.

``source_to_isocentre_mm`` is the default distance from the X-ray source to the
point the C-arm looks at (the bone centre in :mod:`xrecon.sim.poses`). It is a
choice of this project (0.75 SDD = 765 mm, a magnification of 1.33, typical of
mobile C-arms), not a DeepFluoro measurement; pose samplers let you change it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from xrecon.errors import InputError
from xrecon.geometry import Camera


@dataclass(frozen=True)
class DetectorPreset:
    """A flat square detector.

    Attributes:
        name: preset name.
        sdd_mm: source-to-detector distance.
        pixel_spacing_mm: pixel size (square pixels).
        size_px: pixels per side.
        source_to_isocentre_mm: default source-to-isocentre distance for pose sampling.
    """

    name: str
    sdd_mm: float
    pixel_spacing_mm: float
    size_px: int
    source_to_isocentre_mm: float

    @property
    def width_mm(self) -> float:
        """Side length of the detector (mm)."""
        return self.pixel_spacing_mm * self.size_px

    def camera(self, world_to_cam: torch.Tensor | None = None) -> Camera:
        """The camera of this detector; ``world_to_cam: (B, 4, 4)`` or ``(4, 4)``
        (default the identity)."""
        return Camera.from_detector(self.sdd_mm, self.pixel_spacing_mm, self.size_px, self.size_px, world_to_cam)

    def binned(self, size_px: int, name: str | None = None) -> "DetectorPreset":
        """The same detector area sampled with ``size_px`` pixels per side."""
        spacing = self.pixel_spacing_mm * self.size_px / size_px
        return DetectorPreset(name or f"{self.name}@{size_px}", self.sdd_mm, spacing, size_px, self.source_to_isocentre_mm)


DEEPFLUORO = DetectorPreset("deepfluoro", sdd_mm=1020.0, pixel_spacing_mm=0.194, size_px=1536, source_to_isocentre_mm=765.0)

#: Presets by name.
PRESETS: dict[str, DetectorPreset] = {
    "deepfluoro": DEEPFLUORO,
    "cpu128": DEEPFLUORO.binned(128, "cpu128"),
    "cpu256": DEEPFLUORO.binned(256, "cpu256"),
    "cpu512": DEEPFLUORO.binned(512, "cpu512"),
}


def get_preset(name: str) -> DetectorPreset:
    """The preset called ``name``; :class:`InputError` listing the choices otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown detector preset '{name}'; choose one of {', '.join(PRESETS)}") from None


def preset_for_size(size_px: int) -> DetectorPreset:
    """The DeepFluoro detector binned to ``size_px`` pixels per side (any size)."""
    if size_px < 8:
        raise InputError(f"image size must be at least 8 pixels, got {size_px}")
    for preset in PRESETS.values():
        if preset.size_px == size_px:
            return preset
    return DEEPFLUORO.binned(size_px, f"deepfluoro@{size_px}")


def detector_camera(name: str, world_to_cam: torch.Tensor | None = None) -> Camera:
    """Camera of preset ``name`` (see :data:`PRESETS`) with ``world_to_cam: (B, 4, 4)``."""
    return get_preset(name).camera(world_to_cam)
