"""Film-like CT scenes around a pelvis: the neighbouring anatomy a real pelvis film shows.

:func:`ct_from_mesh` (:mod:`xrecon.anatomy.phantom`) paints one bone in a halo of
soft tissue that follows it. :func:`film_scene` paints the same pelvis, voxel for
voxel on the same grid, inside a body:

- **femora** (labels 2, 3): the coupled articulated-ssm model's mean femora,
  scaled with the pelvis instance (the scale of the similarity from the reference
  pelvis onto the instance), with the femoral-head centre put on the centre of a
  sphere fitted to the instance's acetabulum, then turned about that centre by
  sampled flexion, abduction and rotation (:class:`FilmSceneConfig`);
- **sacrum** (label 4): the LLP26 mean sacrum aligned between the hip bones
  (:mod:`shape_models.neighbours`), moved with the instance;
- **lower lumbar spine** (label 5): a *stand-in*, not anatomy from a source (no
  reachable package has one next to a pelvis): ``lumbar_levels`` vertebrae made of
  primitives (an elliptic body 50 x 34 x 27 mm, pedicles, laminae, spinous,
  transverse and articular processes, scaled with the pelvis) stacked on the S1 end
  plate with a sampled sacral slope and lordosis;
- a **body** (label 8) that does not follow the bone: a superelliptic trunk
  around the pelvis with sampled lateral / anterior / posterior tissue depths,
  narrowing over 100 mm below the crotch into two thighs around the femoral shafts; a
  subcutaneous fat layer (-120..-60 HU) over muscle / organs (20..60 HU) with a
  smooth texture; the envelope is grown when needed so every bone lies 15 mm
  inside it;
- **bowel gas** (label 7): random irregular ellipsoids of -1000..-900 HU in the
  lower abdomen (anterior to the sacrum, above the hip centres, under the fat);
- **metal** (label 6) with probability ``p_metal``: screws (1-4, near-parallel,
  into the hip bone), K-wires (1-2) or a hip arthroplasty (stem, ball, cup; the
  femoral head it replaces is removed), 3000..9000 HU.

Bone HU follow :class:`~xrecon.anatomy.phantom.PhantomConfig` (cortical shell,
textured trabecular interior). The label map keeps ``1 = "bone"`` for the pelvis
exactly where :func:`ct_from_mesh` puts it (same voxel centres, the pelvis labels
win over every other structure, also where a screw runs through the bone); the
reconstruction's targets are ray-cast from the pelvis mesh alone, so they do not
change. Every draw comes from ``seed``.

Frames: ``bone`` and ``parts`` in the patient frame (RAS+ mm: +x right, +y
anterior, +z superior; see docs/conventions.md).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace

import numpy as np

from xrecon.anatomy.bone import BoneModel
from xrecon.anatomy.phantom import (AIR_HU, BONE_LABEL, PhantomConfig, _band_signed_distance, _smooth_noise,
                                    inside_mask, phantom_grid)
from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError
from xrecon.geometry.mesh import raycasting_scene

log = logging.getLogger(__name__)

#: Label ids of a film scene (1 is the pelvis, as in :func:`ct_from_mesh`).
FILM_LABELS = {1: "bone", 2: "femur_left", 3: "femur_right", 4: "sacrum", 5: "lumbar_spine", 6: "metal",
               7: "gas", 8: "soft_tissue"}
SIDES = ("left", "right")


@dataclass(frozen=True)
class SceneParts:
    """The neighbours of a pelvis in the frame of a reference pelvis
    (:func:`shape_models.neighbours.pelvis_neighbours` gives them in the model frame).

    Attributes:
        reference_pelvis: ``(V, 3)`` mm, in correspondence with the instances.
        acetabulum_ids: ``{"left"|"right": (n,)}`` vertex ids of ``reference_pelvis``.
        femoral_head_ids: ``{"left"|"right": (m,)}`` vertex ids of each femur.
        femora: ``{"left"|"right": (vertices (Vf, 3), faces (Ff, 3))}`` closed meshes,
            placed at the reference pelvis's hips.
        sacrum: ``(vertices (Vs, 3), faces (Fs, 3))`` closed mesh.
        sacrum_top: ``(3,)`` centre of the S1 upper end plate.
        provenance: where the parts come from.
    """

    reference_pelvis: np.ndarray
    acetabulum_ids: dict
    femoral_head_ids: dict
    femora: dict
    sacrum: tuple
    sacrum_top: np.ndarray
    provenance: str = ""

    def transformed(self, a_to_b: np.ndarray) -> "SceneParts":
        """Every point moved by the 4x4 ``a_to_b`` (e.g. the model-to-patient transform)."""
        T = np.asarray(a_to_b, np.float64)
        mv = lambda p: np.asarray(p, np.float64) @ T[:3, :3].T + T[:3, 3]  # noqa: E731
        return replace(self, reference_pelvis=mv(self.reference_pelvis),
                       femora={s: (mv(v), np.asarray(f)) for s, (v, f) in self.femora.items()},
                       sacrum=(mv(self.sacrum[0]), np.asarray(self.sacrum[1])), sacrum_top=mv(self.sacrum_top))


@dataclass(frozen=True)
class FilmSceneConfig:
    """What :func:`film_scene` samples (ranges ``(lo, hi)`` uniform, once per scene).

    Attributes:
        flexion_deg, abduction_deg, rotation_deg: hip angles of each femur (drawn per
            side) about the hip centre: flexion about the lateral axis (+ = knee
            forward), abduction about the anterior axis (+ = knee away from the
            midline), rotation about the superior axis (+ = internal).
        below_mm, above_mm: how far the volume reaches below / above the pelvis.
        lateral_tissue_mm, anterior_tissue_mm, posterior_tissue_mm: body depth
            beyond the pelvis's extent on each side (the trunk's semi-axes).
        superellipse_power: exponent of the trunk's cross-section (2 = ellipse).
        crotch_mm: crotch height below the hip centres.
        thigh_radius_mm: radius of each thigh around its femoral shaft.
        fat_mm, fat_hu, muscle_hu: subcutaneous fat layer and the tissue under it.
        tissue_texture_hu, tissue_texture_mm: smooth texture of the soft tissue.
        n_gas, gas_radius_mm, gas_hu: number (integer range), size and HU of gas pockets.
        p_metal: probability of metal; ``metal_kinds`` the kinds drawn uniformly.
        metal_hu: HU of a metal object.
        lumbar_levels: vertebrae of the lumbar stand-in (L5 upwards).
        sacral_slope_deg, lordosis_step_deg: forward tilt of L5 and its decrease per level.
        bone_scale: per-bone factor on the patient's cortical / trabecular HU draw.
        tissue: bone HU ranges and CT noise (:class:`~xrecon.anatomy.phantom.PhantomConfig`).
    """

    flexion_deg: tuple[float, float] = (-10.0, 30.0)
    abduction_deg: tuple[float, float] = (-5.0, 15.0)
    rotation_deg: tuple[float, float] = (-15.0, 20.0)
    below_mm: float = 150.0
    above_mm: float = 130.0
    lateral_tissue_mm: tuple[float, float] = (25.0, 90.0)
    anterior_tissue_mm: tuple[float, float] = (30.0, 150.0)
    posterior_tissue_mm: tuple[float, float] = (25.0, 60.0)
    superellipse_power: tuple[float, float] = (2.0, 3.0)
    crotch_mm: tuple[float, float] = (40.0, 70.0)
    thigh_radius_mm: tuple[float, float] = (65.0, 100.0)
    fat_mm: tuple[float, float] = (5.0, 35.0)
    fat_hu: tuple[float, float] = (-120.0, -60.0)
    muscle_hu: tuple[float, float] = (20.0, 60.0)
    tissue_texture_hu: tuple[float, float] = (8.0, 20.0)
    tissue_texture_mm: float = 6.0
    n_gas: tuple[int, int] = (0, 12)
    gas_radius_mm: tuple[float, float] = (6.0, 30.0)
    gas_hu: tuple[float, float] = (-1000.0, -900.0)
    p_metal: float = 0.35
    metal_kinds: tuple[str, ...] = ("screws", "wires", "hip_implant")
    metal_hu: tuple[float, float] = (3000.0, 9000.0)
    lumbar_levels: int = 3
    sacral_slope_deg: tuple[float, float] = (25.0, 40.0)
    lordosis_step_deg: tuple[float, float] = (8.0, 14.0)
    bone_scale: tuple[float, float] = (0.9, 1.1)
    tissue: PhantomConfig = field(default_factory=PhantomConfig)


@dataclass
class PlacedScene:
    """The geometry of one film scene (patient frame, mm): what :func:`place_neighbours`
    decided. ``femora`` / ``hip_centres`` / ``angles_deg`` are keyed by side;
    ``angles_deg`` holds ``(flexion, abduction, rotation)``; ``scale`` is the
    reference-to-instance size ratio; ``lumbar`` is a list of primitives
    (see :func:`_lumbar_primitives`)."""

    femora: dict
    femoral_head_ids: dict
    hip_centres: dict
    angles_deg: dict
    sacrum: tuple
    lumbar: list
    scale: float
    reference_to_instance: np.ndarray


# ----------------------------------------------------------------------------- geometry
def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares sphere through ``points: (N, 3)``: ``(centre (3,), radius)``."""
    p = np.asarray(points, np.float64)
    x, *_ = np.linalg.lstsq(np.c_[2.0 * p, np.ones(len(p))], (p**2).sum(1), rcond=None)
    return x[:3], float(np.sqrt(max(x[3] + x[:3] @ x[:3], 0.0)))


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares 4x4 similarity ``source -> target`` of corresponding ``(N, 3)`` points (Umeyama)."""
    mu_s, mu_t = source.mean(0), target.mean(0)
    a, b = source - mu_s, target - mu_t
    U, S, Vt = np.linalg.svd(b.T @ a / len(a))
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = float(np.trace(np.diag(S) @ D) / (a**2).sum(1).mean())
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = s * R, mu_t - s * R @ mu_s
    return T


def _rot(axis: int, deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(deg)), np.sin(np.radians(deg))
    i, j = [k for k in range(3) if k != axis]
    R = np.eye(3)
    R[i, i], R[i, j], R[j, i], R[j, j] = c, -s, s, c
    return R


def hip_rotation(side: str, flexion_deg: float, abduction_deg: float, rotation_deg: float) -> np.ndarray:
    """``(3, 3)`` rotation of a femur about its hip centre, patient frame (RAS+):
    flexion about +x (the knee, below the hip, moves anterior), abduction about
    the anterior axis (the knee moves away from the midline: -x for the left leg),
    rotation about +z (internal: the front of the femur turns to the midline)."""
    sign = 1.0 if side == "left" else -1.0  # the left leg lies at -x
    return _rot(2, -sign * rotation_deg) @ _rot(1, sign * abduction_deg) @ _rot(0, flexion_deg)


def place_neighbours(pelvis_vertices: np.ndarray, parts: SceneParts, rng: np.random.Generator,
                     config: FilmSceneConfig | None = None) -> PlacedScene:
    """Femora, sacrum and the lumbar stand-in around one pelvis instance.

    Args:
        pelvis_vertices: ``(V, 3)`` the instance, patient frame mm, in correspondence
            with ``parts.reference_pelvis``.
        parts: the neighbours in the same frame.
        rng: draws the hip angles and the lumbar curve.
    """
    cfg = config or FilmSceneConfig()
    pel = np.asarray(pelvis_vertices, np.float64)
    if pel.shape != parts.reference_pelvis.shape:
        raise InputError(f"the pelvis has {pel.shape} vertices, the scene's reference pelvis "
                         f"{parts.reference_pelvis.shape}: not in correspondence")
    T = similarity_transform(parts.reference_pelvis, pel)
    scale = float(np.cbrt(np.linalg.det(T[:3, :3])))
    mv = lambda p: p @ T[:3, :3].T + T[:3, 3]  # noqa: E731
    femora, centres, angles = {}, {}, {}
    for side in SIDES:
        centre, _ = fit_sphere(pel[parts.acetabulum_ids[side]])
        v, f = parts.femora[side]
        v = mv(np.asarray(v, np.float64))
        head, _ = fit_sphere(v[parts.femoral_head_ids[side]])
        ang = (rng.uniform(*cfg.flexion_deg), rng.uniform(*cfg.abduction_deg), rng.uniform(*cfg.rotation_deg))
        R = hip_rotation(side, *ang)
        femora[side] = ((v - head) @ R.T + centre, np.asarray(f, np.int64))
        centres[side], angles[side] = centre, ang
    sacrum = (mv(np.asarray(parts.sacrum[0], np.float64)), np.asarray(parts.sacrum[1], np.int64))
    lumbar = _lumbar_primitives(mv(np.asarray(parts.sacrum_top, np.float64)), scale, rng, cfg)
    return PlacedScene(femora, dict(parts.femoral_head_ids), centres, angles, sacrum, lumbar, scale, T)


def _lumbar_primitives(top: np.ndarray, scale: float, rng: np.random.Generator, cfg: FilmSceneConfig) -> list:
    """The lumbar stand-in: per vertebra a list of primitives ``("body", centre, axes (3, 3), half sizes (3,))``
    and ``("capsule", a, b, radius)``, stacked on ``top`` (S1 end plate) along a lordotic curve."""
    s = scale * rng.uniform(0.95, 1.05)
    alpha = rng.uniform(*cfg.sacral_slope_deg)
    step = rng.uniform(*cfg.lordosis_step_deg)
    x = np.array([1.0, 0.0, 0.0])
    out, plate = [], top
    for level in range(cfg.lumbar_levels):
        a = np.radians(alpha - level * step)
        w = np.array([0.0, np.sin(a), np.cos(a)])  # up the spine
        v = np.array([0.0, np.cos(a), -np.sin(a)])  # anterior
        H, half_w, half_d, disc = 27.0 * s, 25.0 * s, 17.0 * s, 9.0 * s
        c = plate + (disc + H / 2) * w
        prims = [("body", c, np.stack([x, v, w], 1), np.array([half_w, half_d, H / 2]))]
        back = c - 0.8 * half_d * v
        for side in (-1.0, 1.0):
            p0 = back + side * 0.45 * half_w * x
            p1 = p0 - 14.0 * s * v
            prims += [("capsule", p0, p1, 4.5 * s),                                     # pedicle
                      ("capsule", p1, c - (half_d + 24.0 * s) * v, 3.5 * s),           # lamina
                      ("capsule", p1 + side * 4.0 * s * x,
                       p1 + side * (28.0 if level else 24.0) * s * x - 3.0 * s * v,
                       (5.0 if level == 0 else 3.5) * s),                               # transverse process
                      ("capsule", p1 - 9.0 * s * w, p1 + 9.0 * s * w, 4.0 * s)]         # articular processes
        q = c - (half_d + 24.0 * s) * v
        prims.append(("capsule", q, q - 22.0 * s * v - 8.0 * s * w, 4.5 * s))          # spinous process
        out.append(prims)
        plate = c + (H / 2) * w
    return out


# ----------------------------------------------------------------------------- signed distances
def _sd_capsule(P: np.ndarray, a: np.ndarray, b: np.ndarray, r: float) -> np.ndarray:
    ab = b - a
    t = np.clip(((P - a) @ ab) / max(ab @ ab, 1e-12), 0.0, 1.0)
    return np.linalg.norm(P - a - t[..., None] * ab, axis=-1) - r


def _sd_body(P: np.ndarray, c: np.ndarray, axes: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Approximate signed distance to an elliptic cylinder (axis = third column of ``axes``)."""
    q = (P - c) @ axes
    radial = np.sqrt((q[..., 0] / half[0]) ** 2 + (q[..., 1] / half[1]) ** 2)
    d_r = (radial - 1.0) * min(half[0], half[1])
    d_a = np.abs(q[..., 2]) - half[2]
    return np.minimum(np.maximum(d_r, d_a), 0.0) + np.hypot(np.maximum(d_r, 0.0), np.maximum(d_a, 0.0))


def _sd_ellipsoid(P: np.ndarray, c: np.ndarray, axes: np.ndarray, radii: np.ndarray) -> np.ndarray:
    q = (P - c) @ axes
    k0 = np.linalg.norm(q / radii, axis=-1)
    k1 = np.linalg.norm(q / radii**2, axis=-1)
    return k0 * (k0 - 1.0) / np.maximum(k1, 1e-9)


def _sd_shell(P: np.ndarray, c: np.ndarray, r_in: float, r_out: float, opening: np.ndarray) -> np.ndarray:
    """A hemispherical shell (an acetabular cup) open towards ``opening``."""
    rho = np.linalg.norm(P - c, axis=-1)
    return np.maximum(np.maximum(rho - r_out, r_in - rho), (P - c) @ opening)


class _Grid:
    """World coordinates of sub-boxes of an axis-aligned grid."""

    def __init__(self, voxel_to_world: np.ndarray, shape):
        self.A, self.shape = voxel_to_world, tuple(shape)
        self.h = float(voxel_to_world[0, 0])
        self.lo = voxel_to_world[:3, 3]

    def box(self, lo_mm, hi_mm, pad: int = 2):
        """Slices of the voxels in ``[lo_mm, hi_mm]`` (plus ``pad``), or None when empty."""
        i0 = np.floor((np.asarray(lo_mm) - self.lo) / self.h).astype(int) - pad
        i1 = np.ceil((np.asarray(hi_mm) - self.lo) / self.h).astype(int) + pad + 1
        i0, i1 = np.maximum(i0, 0), np.minimum(i1, self.shape)
        if (i1 <= i0).any():
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(i0, i1))

    def points(self, box) -> np.ndarray:
        axes = [self.lo[d] + self.h * np.arange(box[d].start, box[d].stop) for d in range(3)]
        return np.stack(np.meshgrid(*axes, indexing="ij"), -1)


def _mesh_distance(grid: _Grid, vertices: np.ndarray, faces: np.ndarray, inner_mm: float):
    """``(box, inside, d)`` of a closed mesh on ``grid`` (d: signed distance in a band,
    +-inf elsewhere; see :func:`xrecon.anatomy.phantom._band_signed_distance`). The mesh may
    reach beyond the grid: rays start below the mesh, so parity stays right. None when
    the mesh misses the grid."""
    box = grid.box(vertices.min(0), vertices.max(0))
    if box is None:
        return None
    h = grid.h
    k_first = int(np.floor((vertices[:, 2].min() - grid.lo[2]) / h)) - 2  # may be below the grid
    k0 = min(k_first, box[2].start)
    A = grid.A.copy()
    A[:3, 3] = grid.lo + h * np.array([box[0].start, box[1].start, k0])
    shape = (box[0].stop - box[0].start, box[1].stop - box[1].start, box[2].stop - k0)
    scene = raycasting_scene(vertices, faces)
    inside = inside_mask(scene, A, shape)[:, :, box[2].start - k0:]
    A[:3, 3] = grid.lo + h * np.array([s.start for s in box])
    d = _band_signed_distance(scene, inside, A, inner_mm=inner_mm + 0.5 * h, outer_mm=0.5 * h)
    return box, inside, d


# ----------------------------------------------------------------------------- the scene
def film_scene(
    bone: BoneModel,
    parts: SceneParts,
    *,
    spacing_mm: float = 2.5,
    cortical_thickness_mm: float = 2.0,
    soft_tissue_mm: float = 25.0,
    seed: int = 0,
    config: FilmSceneConfig | None = None,
    with_bone: bool = True,
) -> tuple[Volume, Volume]:
    """A film-like CT scene around the pelvis ``bone`` and its label map (:data:`FILM_LABELS`).

    Args:
        bone: the pelvis instance, a closed mesh, patient frame (RAS+ mm), in
            correspondence with ``parts.reference_pelvis``.
        parts: its neighbours in the same frame (:class:`SceneParts`).
        spacing_mm: isotropic voxel size.
        cortical_thickness_mm: the pelvis's cortex (femora: 1.75 times, sacrum and
            spine: 0.75 times).
        soft_tissue_mm: only sets the grid: the volume is :func:`ct_from_mesh`'s grid
            for these arguments, extended by whole voxels, so the pelvis's voxel centres
            (and labels) are the same.
        seed: seeds every random draw.
        config: what is sampled (default :class:`FilmSceneConfig`).
        with_bone: ``False`` paints the pelvis as soft tissue (negatives); its labels stay.

    Returns:
        ``(ct, labels)``: float32 HU and uint8 ids on one axis-aligned grid.
    """
    cfg = config or FilmSceneConfig()
    tis = cfg.tissue
    if spacing_mm <= 0 or cortical_thickness_mm <= 0:
        raise InputError(f"spacing_mm ({spacing_mm}) and cortical_thickness_mm ({cortical_thickness_mm}) must be > 0",
                         bone.source)
    rng = np.random.default_rng(seed)
    h = float(spacing_mm)
    pel = np.asarray(bone.vertices, np.float64)
    placed = place_neighbours(pel, parts, rng, cfg)

    # ---- the body: a superelliptic trunk, two thighs below the crotch
    bones_pts = [pel, placed.sacrum[0]] + [v for v, _ in placed.femora.values()]
    z_lo, z_hi = pel[:, 2].min() - cfg.below_mm, pel[:, 2].max() + cfg.above_mm
    hip_z = min(c[2] for c in placed.hip_centres.values())
    z_crotch = hip_z - rng.uniform(*cfg.crotch_mm)
    cx = 0.5 * (pel[:, 0].min() + pel[:, 0].max())
    half_w = 0.5 * (pel[:, 0].max() - pel[:, 0].min())
    cy = 0.5 * (pel[:, 1].min() + pel[:, 1].max())
    ax = half_w + rng.uniform(*cfg.lateral_tissue_mm)
    ay_front = pel[:, 1].max() - cy + rng.uniform(*cfg.anterior_tissue_mm)
    ay_back = cy - min(pel[:, 1].min(), placed.sacrum[0][:, 1].min()) + rng.uniform(*cfg.posterior_tissue_mm)
    power = rng.uniform(*cfg.superellipse_power)
    thigh_r = rng.uniform(*cfg.thigh_radius_mm)
    lumbar_pts = np.concatenate([np.stack([p[1], p[2]]) for lv in placed.lumbar for p in lv if p[0] == "capsule"]
                                + [np.stack([lv[0][1]]) for lv in placed.lumbar])

    def trunk_r(x, y):
        ay = np.where(y >= cy, ay_front, ay_back)
        return (np.abs((x - cx) / ax) ** power + np.abs((y - cy) / ay) ** power) ** (1.0 / power)

    # grow the trunk so every bone in it lies 15 mm inside (r is 1-homogeneous in the semi-axes)
    in_trunk = np.concatenate(bones_pts + [lumbar_pts])
    in_trunk = in_trunk[(in_trunk[:, 2] > z_crotch) & (in_trunk[:, 2] < z_hi)]
    rr = trunk_r(in_trunk[:, 0], in_trunk[:, 1])
    reach = np.hypot(in_trunk[:, 0] - cx, in_trunk[:, 1] - cy)
    grow = float(np.max(rr / np.clip(1.0 - 15.0 * rr / np.maximum(reach, 1e-6), 0.2, None), initial=0.0))
    if grow > 1.0:
        ax, ay_front, ay_back = ax * grow, ay_front * grow, ay_back * grow
    shafts = {}
    for side, (v, _) in placed.femora.items():  # the shaft axis: a line fitted below the trochanters
        shaft = v[v[:, 2] < placed.hip_centres[side][2] - 70.0]
        mu = shaft.mean(0)
        d = np.linalg.svd(shaft - mu)[2][0]
        shafts[side] = (mu, d / d[2] if abs(d[2]) > 1e-6 else d)  # point + direction with dz = 1
        off = shaft - (mu + (shaft[:, 2:3] - mu[2]) * shafts[side][1])
        thigh_r = max(thigh_r, float(np.linalg.norm(off[:, :2], axis=1).max()) + 15.0)

    # ---- the grid: ct_from_mesh's grid, extended by whole voxels to hold the body
    A0, shape0 = phantom_grid(pel, h, soft_tissue_mm * max(tis.soft_tissue_scale) + 5.0, bone.source)
    lo0, hi0 = A0[:3, 3], A0[:3, 3] + h * (np.asarray(shape0) - 1)
    box_lo = np.array([min(cx - ax, *(c[0] - thigh_r for c in placed.hip_centres.values())) - 2 * h,
                       cy - ay_back - 2 * h, z_lo])
    box_hi = np.array([max(cx + ax, *(c[0] + thigh_r for c in placed.hip_centres.values())) + 2 * h,
                       cy + ay_front + 2 * h, z_hi])
    n_lo = np.maximum(np.ceil((lo0 - box_lo) / h), 0).astype(int)
    n_hi = np.maximum(np.ceil((box_hi - hi0) / h), 0).astype(int)
    shape = tuple(int(s) for s in np.asarray(shape0) + n_lo + n_hi)
    if int(np.prod(shape)) > 200_000_000:
        raise InputError(f"film scene grid {shape} is too large; raise spacing_mm", bone.source)
    A = A0.copy()
    A[:3, 3] = lo0 - h * n_lo
    grid = _Grid(A, shape)
    xs, ys, zs = (A[d, 3] + h * np.arange(shape[d]) for d in range(3))

    # depth below the skin (mm, > 0 inside), slice by slice
    X, Y = np.meshgrid(xs, ys, indexing="ij")
    r2d = trunk_r(X, Y)
    trunk_depth = (np.hypot(X - cx, Y - cy) * (1.0 / np.maximum(r2d, 1e-6) - 1.0)).astype(np.float32)
    depth = np.empty(shape, np.float32)
    for k, z in enumerate(zs):
        if z >= z_crotch:
            depth[:, :, k] = trunk_depth
            continue
        taper = np.clip(1.0 - (z_crotch - z) / 100.0, 0.0, 1.0)  # buttocks: the trunk fades over 100 mm
        dk = np.where(taper > 0, trunk_depth - (1.0 - taper) ** 0.7 * 160.0, -np.inf)
        for mu, dvec in shafts.values():
            c = mu + (z - mu[2]) * dvec
            dk = np.maximum(dk, thigh_r - np.hypot(X - c[0], Y - c[1]))
        depth[:, :, k] = dk

    # ---- soft tissue: fat over muscle, textured
    fat_mm, fat_hu, muscle_hu = rng.uniform(*cfg.fat_mm), rng.uniform(*cfg.fat_hu), rng.uniform(*cfg.muscle_hu)
    tex = _smooth_noise(rng, shape, cfg.tissue_texture_mm / h)
    w_fat = np.clip(0.5 - (depth - fat_mm) / h, 0.0, 1.0)
    soft = (w_fat * fat_hu + (1.0 - w_fat) * muscle_hu + rng.uniform(*cfg.tissue_texture_hu) * tex).astype(np.float32)
    f_body = np.clip(0.5 + depth / h, 0.0, 1.0)
    hu = (AIR_HU + f_body * (soft - AIR_HU)).astype(np.float32)
    labels = np.where(f_body > 0.5, 8, 0).astype(np.uint8)

    # ---- bowel gas: irregular ellipsoids in the lower abdomen, under the fat
    top_sac = placed.lumbar[0][0][1] if placed.lumbar else placed.sacrum[0].mean(0)
    n_gas = int(rng.integers(cfg.n_gas[0], cfg.n_gas[1] + 1))
    for _ in range(n_gas):
        r = rng.uniform(*cfg.gas_radius_mm)
        c = np.array([cx + rng.uniform(-0.6, 0.6) * ax, rng.uniform(top_sac[1] + 10.0, cy + ay_front),
                      rng.uniform(hip_z, top_sac[2] + 60.0)])
        ijk = np.round((c - A[:3, 3]) / h).astype(int)
        if (ijk < 0).any() or (ijk >= shape).any() or depth[tuple(ijk)] < fat_mm + r + 5.0:
            continue  # not under the fat: drop it
        axes = np.linalg.qr(rng.standard_normal((3, 3)))[0]
        radii = r * rng.uniform(0.5, 1.3, 3)
        box = grid.box(c - radii.max(), c + radii.max())
        if box is None:
            continue
        d = _sd_ellipsoid(grid.points(box), c, axes, radii) + 0.2 * r * tex[box][::-1]
        f = np.clip(0.5 - d / h, 0.0, 1.0) * (depth[box] > fat_mm)
        g = rng.uniform(*cfg.gas_hu)
        hu[box] += f * (g - hu[box])
        labels[box][f > 0.5] = 7

    # ---- bones: femora, sacrum, lumbar stand-in, then the pelvis
    cort = rng.uniform(*tis.cortical_hu)
    trab = rng.uniform(*tis.trabecular_hu)
    trab_tex = rng.uniform(*tis.trabecular_texture_hu)
    bone_tex = _smooth_noise(rng, shape, tis.texture_scale_mm / h)

    def paint(box, d, t_mm, label, keep=None):
        k = rng.uniform(*cfg.bone_scale)
        f = np.clip(0.5 - d / h, 0.0, 1.0)
        if keep is not None:
            f = f * keep
        w = np.clip((t_mm + d) / h + 0.5, 0.0, 1.0)
        b_hu = k * (w * cort + (1.0 - w) * (trab + trab_tex * bone_tex[box]))
        hu[box] += f * (b_hu - hu[box])
        if label:
            labels[box][f > 0.5] = label

    implant = None
    if rng.uniform() < cfg.p_metal:
        implant = str(cfg.metal_kinds[int(rng.integers(len(cfg.metal_kinds)))])
    implant_side = SIDES[int(rng.integers(2))]
    for label, side in ((2, "left"), (3, "right")):
        v, f = placed.femora[side]
        got = _mesh_distance(grid, v, f, 1.75 * cortical_thickness_mm)
        if got is None:
            continue
        box, inside, d = got
        keep = None
        if implant == "hip_implant" and side == implant_side:  # the femoral head is resected
            _, r_head = fit_sphere(v[placed.femoral_head_ids[side]])
            keep = np.linalg.norm(grid.points(box) - placed.hip_centres[side], axis=-1) > 1.1 * r_head
        paint(box, d, 1.75 * cortical_thickness_mm, label, keep)
    got = _mesh_distance(grid, *placed.sacrum, 0.75 * cortical_thickness_mm)
    if got is not None:
        paint(got[0], got[2], 0.75 * cortical_thickness_mm, 4)
    for vertebra in placed.lumbar:
        pts = np.concatenate([np.atleast_2d(p[1]) for p in vertebra] + [np.atleast_2d(p[2]) for p in vertebra
                                                                         if p[0] == "capsule"])
        box = grid.box(pts.min(0) - 30.0, pts.max(0) + 30.0)
        if box is None:
            continue
        P = grid.points(box)
        d = np.full(P.shape[:3], np.inf)
        for p in vertebra:
            d = np.minimum(d, _sd_body(P, *p[1:]) if p[0] == "body" else _sd_capsule(P, *p[1:]))
        paint(box, d, 0.75 * cortical_thickness_mm, 5)

    scene = raycasting_scene(pel, bone.faces)
    inside0 = inside_mask(scene, A0, shape0)
    if not inside0.any():
        raise InputError("mesh encloses no voxel centre (open mesh, or smaller than one voxel?)", bone.source)
    pbox = tuple(slice(int(n), int(n + s)) for n, s in zip(n_lo, shape0))
    if with_bone:
        d0 = _band_signed_distance(scene, inside0, A0, inner_mm=cortical_thickness_mm + 0.5 * h, outer_mm=0.5 * h)
        paint(pbox, d0, cortical_thickness_mm, 0)

    # ---- metal
    metal = _metal_field(implant, implant_side, placed, pel, bone.faces, grid, rng, with_bone) if implant else []
    for box, d in metal:
        f = np.clip(0.5 - d / h, 0.0, 1.0)
        hu[box] += f * (rng.uniform(*cfg.metal_hu) - hu[box])
        labels[box][f > 0.5] = 6
    labels[pbox][inside0] = BONE_LABEL

    hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(rng.uniform(*tis.noise_hu))
    src = (f"film scene of {bone.source} (seed {seed}, {h:g} mm; metal: {implant or 'none'}; "
           f"gas pockets: {n_gas})")
    return (Volume(hu.astype(np.float32), A, src),
            Volume(labels, A.copy(), src, dict(FILM_LABELS)))


def _metal_field(kind: str, side: str, placed: PlacedScene, pel: np.ndarray, faces: np.ndarray, grid: _Grid,
                 rng: np.random.Generator, with_bone: bool) -> list:
    """``[(box, signed distance)]`` of the metal objects of one ``kind``."""
    out = []

    def add(prims, pad=10.0):
        pts = np.concatenate([np.atleast_2d(p[1]) for p in prims] + [np.atleast_2d(p[2]) for p in prims
                                                                     if p[0] == "capsule"])
        box = grid.box(pts.min(0) - pad, pts.max(0) + pad)
        if box is None:
            return
        P = grid.points(box)
        d = np.full(P.shape[:3], np.inf)
        for p in prims:
            fn = {"capsule": _sd_capsule, "shell": _sd_shell, "ball": lambda P, c, r: np.linalg.norm(P - c, axis=-1) - r}
            d = np.minimum(d, fn[p[0]](P, *p[1:]))
        out.append((box, d))

    if kind == "screws" and not with_bone:
        kind = "wires"
    if kind == "screws":  # 1-4 near-parallel screws into the hip bone, heads 5 mm proud of the surface
        normals = _vertex_normals(pel, faces)
        i0 = int(rng.integers(len(pel)))
        near = np.flatnonzero(np.linalg.norm(pel - pel[i0], axis=1) < 30.0)
        for i in rng.choice(near, size=min(len(near), int(rng.integers(1, 5))), replace=False):
            axis = -normals[i] + 0.3 * rng.standard_normal(3)
            axis /= np.linalg.norm(axis)
            head = pel[i] - 5.0 * axis
            length = rng.uniform(35.0, 90.0)
            add([("capsule", head, head + length * axis, 3.25), ("capsule", head - 2.0 * axis, head, 5.0)])
    elif kind == "wires":  # 1-2 K-wires, 1 mm radius, through the femoral neck or across the pelvis
        for _ in range(int(rng.integers(1, 3))):
            start = placed.hip_centres[SIDES[int(rng.integers(2))]] + rng.normal(0.0, 25.0, 3)
            axis = rng.standard_normal(3)
            axis /= np.linalg.norm(axis)
            length = rng.uniform(80.0, 200.0)
            add([("capsule", start - 0.5 * length * axis, start + 0.5 * length * axis, 1.0)])
    elif kind == "hip_implant":  # stem down the femoral canal, ball in the acetabulum, cup around it
        c = placed.hip_centres[side]
        v, _ = placed.femora[side]
        shaft = v[(v[:, 2] < c[2] - 70.0) & (v[:, 2] > c[2] - 200.0)]
        mu = shaft.mean(0)
        d = np.linalg.svd(shaft - mu)[2][0]
        d = d if d[2] < 0 else -d  # down the shaft
        neck_end = mu + (c[2] - 45.0 - mu[2]) / d[2] * d
        r_ball = rng.uniform(14.0, 18.0)
        lateral = np.array([-1.0 if side == "left" else 1.0, 0.0, 0.0])
        incl, antev = np.radians(rng.uniform(35.0, 50.0)), np.radians(rng.uniform(5.0, 25.0))
        opening = np.cos(incl) * np.array([0.0, 0.0, -1.0]) + np.sin(incl) * lateral
        opening = opening * np.cos(antev) + np.sin(antev) * np.array([0.0, 1.0, 0.0])
        stem = [("capsule", c, neck_end, 6.0)]
        for j, r in enumerate((7.5, 6.0, 4.5)):
            stem.append(("capsule", neck_end + 40.0 * j * d, neck_end + 40.0 * (j + 1) * d, r))
        add(stem + [("ball", c, r_ball), ("shell", c, r_ball + 3.0, r_ball + 7.0, opening / np.linalg.norm(opening))],
            pad=20.0)
    return out


def _vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    tri = vertices[faces]
    fn = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = np.zeros_like(vertices)
    for k in range(3):
        np.add.at(n, faces[:, k], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-12)


__all__ = ["FILM_LABELS", "SceneParts", "FilmSceneConfig", "PlacedScene", "film_scene", "place_neighbours",
           "hip_rotation", "fit_sphere", "similarity_transform"]
