"""Training data of the reconstruction network: simulated X-rays of shape-model
instances with their per-pixel canonical coordinates.

Generation (:func:`generate_dataset`), for each shape of one subject split
(train / val / test, fixed by ``shape_models``) of a population
(:data:`POPULATIONS`: the bundled shape model's own subjects, in its span, or
shapes beyond it), plus optional random draws from the model:

1. the instance mesh is placed in a patient frame (RAS+, mm, centred on the mean
   shape's centroid) and turned once into a CT-like volume (bone shell,
   trabecular interior, soft-tissue envelope) by
   :func:`xrecon.anatomy.phantom.ct_from_mesh`;
2. one DRR renderer is built per volume (:class:`xrecon.sim.drr.DrrRenderer`)
   and renders ``views_per_shape`` C-arm poses drawn by
   :func:`sample_world_to_cam` (seed 002's protocol or a wider one);
3. every view's ground truth comes from ray casting the posed mesh
   (:func:`xrecon.methods.recon.targets.view_targets`).

Layout of the HDF5 file (one row per image, ``N`` rows, ``H = W = image_size``)::

    image       (N, H, W)        float32  DRR line integrals (no augmentation)
    mask        (N, H, W)        uint8    ray meets the bone
    canonical   (N, 2, 3, H, W)  float16  entry / exit canonical coords, model frame, mm
    shape_sd    (N, K)           float32  shape coefficients (SD) of the instance (beyond the
                                          span: its least-squares projection onto the model)
    world_to_cam (N, 4, 4)       float64  pose of the patient frame (RAS+) in the camera
    model_to_cam (N, 4, 4)       float64  pose of the shape model frame in the camera
    K           (N, 3, 3)        float64  intrinsics
    subject     (N,)             int32    subject index (-1 for random draws)
    shape_index (N,)             int32    row of ``shapes`` holding the image's shape
    shapes      (S, V, 3)        float32  beyond the span (population other than ``ssm``): each
                                          shape's vertices, model frame, mm (the truth, in the
                                          model's correspondence, its faces)
    attrs: config (JSON), shape_model, model_to_world (4x4), pixel_spacing_mm, frames

Augmentation happens at load time (:class:`ReconH5Dataset`), so one file
serves every epoch with new intensities.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from xrecon.errors import InputError
from xrecon.geometry import Camera, se3
from xrecon.io import atomic_path

log = logging.getLogger(__name__)

#: Shape populations a dataset is simulated from (docs/populations.md):
#: ``ssm``: the bundled model's own subjects (inside its span);
#: ``deformed``: the same subjects moved by a smooth random deformation beyond the
#: span (:class:`shape_models.populations.OutOfSpanPopulation`, its calibrated defaults);
#: ``llp26``: the LLP26 real subjects (another study), registered into the model's
#: correspondence (:func:`shape_models.populations.register_llp26`; no LLP26 subject is
#: in a train split).
POPULATIONS = ("ssm", "deformed", "llp26")

#: Phantom kinds (:attr:`ReconDataConfig.scene`): ``bone`` (the bone in a soft-tissue halo) or
#: ``film`` (the neighbouring anatomy a pelvis film shows, docs/anatomy.md "Film-like scenes").
SCENES = ("bone", "film")


def pose_sampler(protocol: str):
    """Pose sampler configs of a protocol name: ``seed002`` (seed 002's), ``wide``
    (the simulator's GENERAL angles, tilt and roll, with seed 002's offsets and
    source distance, so the depth prior matches the test protocol), ``mixed``
    (half of each)."""
    from xrecon.sim.poses import GENERAL, SEED002

    wide = dataclasses.replace(GENERAL, source_to_isocentre_mm=None, offset_std_mm=SEED002.offset_std_mm)
    return {"seed002": [SEED002], "wide": [wide], "mixed": [SEED002, wide]}[protocol]


def sample_world_to_cam(n: int, protocol: str, rng: np.random.Generator, source_to_isocentre_mm: float,
                        centre_world: np.ndarray = np.zeros(3)) -> np.ndarray:
    """``n`` poses ``(n, 4, 4)`` (patient RAS+ frame to camera) around ``centre_world``
    (:func:`xrecon.sim.poses.sample_poses`; a mixed protocol alternates its samplers)."""
    from xrecon.sim.poses import sample_poses

    samplers = pose_sampler(protocol)
    out = np.zeros((n, 4, 4))
    for j, sampler in enumerate(samplers):
        rows = np.arange(j, n, len(samplers))
        out[rows] = sample_poses(sampler, len(rows), centre_world, rng, source_to_isocentre_mm).world_to_cam.numpy()
    return out


@dataclass(frozen=True)
class ReconDataConfig:
    """What :func:`generate_dataset` writes.

    Attributes:
        split: subject split of the bundled shape model (``train``, ``val``, ``test``).
        n_shapes: subjects used (``n_shapes`` of the split from ``first_shape``;
            ``None`` = all the rest).
        first_shape: index of the first subject of the split used (to simulate a
            split in parts: part 1 ``first_shape=0, n_shapes=80``, part 2
            ``first_shape=80``; give each part its own ``seed``).
        n_random_shapes: extra instances drawn from the model (``N(0, I)`` SD,
            clipped to ``random_max_sd``); only for training data.
        views_per_shape: simulated views of each shape.
        protocol: ``"seed002"``, ``"wide"`` or ``"mixed"`` (:func:`pose_sampler`).
        image_size: detector pixels (square): the DeepFluoro detector of
            :mod:`xrecon.sim.detector` binned to this size (``cpu128`` at 128).
        phantom_spacing_mm: voxel size of the CT-like volume.
        render_spacing_mm: voxel size the renderer resamples to.
        n_samples: samples per ray of the renderer.
        shape_model: bundled shape model name.
        population: where the shapes come from (:data:`POPULATIONS`).
        seed: seeds poses, random shapes and phantoms.
        scene: ``"bone"`` (the phantom of :func:`xrecon.anatomy.phantom.ct_from_mesh`: the
            bone in a halo of soft tissue) or ``"film"`` (:func:`xrecon.anatomy.scene.film_scene`:
            the same pelvis voxels with femora, sacrum, a lumbar stand-in, a body, gas and
            metal; the targets still come from the pelvis mesh alone).
        with_bone: ``False`` simulates *negatives*: the same bodies with the bone
            replaced by soft tissue, an empty bone mask and ``has_bone = 0``,
            so the network learns to find no bone where there is none.
    """

    split: str = "train"
    n_shapes: int | None = None
    first_shape: int = 0
    n_random_shapes: int = 0
    random_max_sd: float = 2.5
    views_per_shape: int = 16
    protocol: str = "mixed"
    image_size: int = 128
    phantom_spacing_mm: float = 2.5
    render_spacing_mm: float = 2.5
    n_samples: int = 128
    shape_model: str = "pelvis"
    seed: int = 0
    with_bone: bool = True
    population: str = "ssm"
    scene: str = "bone"

    def __post_init__(self):
        if self.scene not in SCENES:
            raise InputError(f"scene must be one of {SCENES}, got {self.scene!r}")
        if self.scene == "film" and self.shape_model != "pelvis":
            raise InputError("scene 'film' is built around the pelvis model (shape_model='pelvis')")
        if self.split not in ("train", "val", "test"):
            raise InputError(f"split must be train, val or test, got {self.split!r}")
        if self.first_shape < 0:
            raise InputError(f"first_shape must be >= 0, got {self.first_shape}")
        if self.protocol not in ("seed002", "wide", "mixed"):
            raise InputError(f"protocol must be 'seed002', 'wide' or 'mixed', got {self.protocol!r}")
        if self.population not in POPULATIONS:
            raise InputError(f"population must be one of {POPULATIONS}, got {self.population!r}")
        if self.population != "ssm" and self.n_random_shapes:
            raise InputError("n_random_shapes draws from the model's span: only with population='ssm'")
        if self.population == "llp26" and self.split == "train":
            raise InputError("no LLP26 subject is for training (population 'llp26' has val and test splits only)")

    def detector(self):
        """The detector preset (:func:`xrecon.sim.detector.preset_for_size`)."""
        from xrecon.sim.detector import preset_for_size

        return preset_for_size(self.image_size)

    def camera(self) -> Camera:
        """The detector's camera (pose = identity)."""
        return self.detector().camera()


def split_shapes(space_model, cfg: ReconDataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Shape coefficients ``(S, K)`` and subject ids ``(S,)`` (-1: random draw) of a config."""
    scores = np.asarray(space_model.extra_arrays_["subject_scores"], np.float64)
    ids = list(space_model.metadata_["split"][cfg.split])[cfg.first_shape:]
    if cfg.n_shapes is not None:
        ids = ids[: cfg.n_shapes]
    b = scores[ids]
    subj = np.asarray(ids, np.int64)
    if cfg.n_random_shapes:
        rng = np.random.default_rng(cfg.seed + 7919)
        extra = np.clip(rng.standard_normal((cfg.n_random_shapes, scores.shape[1])), -cfg.random_max_sd,
                        cfg.random_max_sd)
        b = np.concatenate([b, extra])
        subj = np.concatenate([subj, -np.ones(cfg.n_random_shapes, np.int64)])
    return b, subj


def dataset_shapes(model, space, cfg: ReconDataConfig) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """The shapes of a config: vertices ``(S, V, 3)`` (model frame, mm; ``None`` in the
    span, where ``space.instance(coefficients)`` gives them, so thousands of random
    draws are never held at once), coefficients ``(S, K)`` in SD (beyond the span: the
    least-squares projection onto the model, same frame) and subject ids ``(S,)`` (-1:
    a random draw; for ``deformed`` the draw index, for ``llp26`` the LLP26 subject)."""
    if cfg.population == "ssm":
        coeffs, subjects = split_shapes(model, cfg)
        return None, coeffs, subjects
    if cfg.population == "deformed":
        from shape_models.populations import OutOfSpanPopulation

        n = len(model.metadata_["split"][cfg.split]) - cfg.first_shape if cfg.n_shapes is None else cfg.n_shapes
        draws = OutOfSpanPopulation().draws(model, cfg.split, max(n, 0), start=cfg.first_shape)
        verts = np.stack([d.vertices for d in draws])
        subjects = np.asarray([d.index for d in draws], np.int64)
    else:
        verts, subjects = llp26_shapes(model, cfg.split)
        verts, subjects = verts[cfg.first_shape:], subjects[cfg.first_shape:]
        if cfg.n_shapes is not None:
            verts, subjects = verts[: cfg.n_shapes], subjects[: cfg.n_shapes]
    coeffs = np.atleast_2d(model.transform(verts, align=False))[:, : space.n_modes]
    return verts, coeffs, subjects


def llp26_shapes(model, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The LLP26 subjects of ``split`` (:func:`shape_models.populations.population_split`)
    in ``model``'s correspondence, rigidly aligned to its mean in the model frame:
    vertices ``(S, V, 3)`` mm and subject ids ``(S,)``. The registration (about 40 s
    per subject) is cached on disk (:mod:`xrecon.anatomy.cache`)."""
    from shape_models.populations import population_split, register_llp26
    from shape_models.procrustes import align_points, apply_transform
    from xrecon.anatomy.cache import cached_arrays, hash_inputs

    ids = np.asarray(population_split("llp26")[split], np.int64)
    mean = np.asarray(model.mean_, np.float64).reshape(-1, 3)
    out = []
    for sid in ids:
        def compute(sid=int(sid)):
            v = np.asarray(register_llp26(model, [sid])[0].vertices, np.float64)
            return {"vertices": apply_transform(align_points(v, mean, "rigid"), v)}

        key = hash_inputs("llp26", int(sid), mean, np.asarray(model.faces_))
        out.append(cached_arrays("llp26_in_correspondence", key, compute)["vertices"])
    return np.stack(out), ids


def model_to_world(space) -> np.ndarray:
    """``(4, 4)`` model frame -> patient RAS+ frame with the mean shape's centroid at the origin."""
    T = space.model_to_ras.copy()
    T[:3, 3] = -T[:3, :3] @ space.centre_mm
    return T


def phantom_of(space, vertices_model: np.ndarray, cfg: ReconDataConfig, seed: int):
    """CT-like volume and label map of an instance, in the patient frame."""
    from xrecon.anatomy.bone import BoneModel
    from xrecon.anatomy.phantom import PhantomConfig, ct_from_mesh

    T = model_to_world(space)
    bone = BoneModel(vertices_model @ T[:3, :3].T + T[:3, 3], space.faces, frame="patient (RAS+ mm)",
                     source=f"{space.name} instance")
    if cfg.scene == "film":
        from shape_models.neighbours import pelvis_neighbours
        from xrecon.anatomy.scene import SceneParts, film_scene

        parts = SceneParts(**pelvis_neighbours(cfg.shape_model)).transformed(T)
        return film_scene(bone, parts, spacing_mm=cfg.phantom_spacing_mm, seed=seed, with_bone=cfg.with_bone)
    tissue = None
    if not cfg.with_bone:  # bone voxels get soft-tissue values: the body without its bone
        soft = PhantomConfig().soft_tissue_hu
        tissue = PhantomConfig(cortical_hu=soft, trabecular_hu=soft, trabecular_texture_hu=(5.0, 15.0))
    return ct_from_mesh(bone, spacing_mm=cfg.phantom_spacing_mm, seed=seed, config=tissue)


def generate_dataset(out_path: str | Path, cfg: ReconDataConfig, progress: bool = True) -> Path:
    """Simulate the dataset of ``cfg`` into the HDF5 file ``out_path`` (atomically)."""
    import h5py
    from tqdm import tqdm

    from shape_models.bundled import load_model
    from xrecon.geometry.mesh import raycasting_scene
    from xrecon.methods.recon.shape import ShapeSpace
    from xrecon.methods.recon.targets import view_targets
    from xrecon.sim.drr import DrrRenderer

    out_path = Path(out_path)
    model = load_model(cfg.shape_model)
    space = ShapeSpace.from_shape_model(model)
    shapes, coeffs, subjects = dataset_shapes(model, space, cfg)
    n_img = len(coeffs) * cfg.views_per_shape
    size, k = cfg.image_size, space.n_modes
    camera = cfg.camera()
    m2w = model_to_world(space)
    sod_mm = cfg.detector().source_to_isocentre_mm
    rng = np.random.default_rng(cfg.seed)
    t0 = time.monotonic()
    with atomic_path(out_path) as tmp, h5py.File(tmp, "w") as h5:
        d_img = h5.create_dataset("image", (n_img, size, size), "f4", chunks=(1, size, size))
        d_mask = h5.create_dataset("mask", (n_img, size, size), "u1", chunks=(1, size, size), compression="lzf")
        d_can = h5.create_dataset("canonical", (n_img, 2, 3, size, size), "f2", chunks=(1, 2, 3, size, size),
                                  compression="lzf")
        d_b = h5.create_dataset("shape_sd", (n_img, k), "f4")
        d_w2c = h5.create_dataset("world_to_cam", (n_img, 4, 4), "f8")
        d_m2c = h5.create_dataset("model_to_cam", (n_img, 4, 4), "f8")
        d_K = h5.create_dataset("K", (n_img, 3, 3), "f8")
        d_subj = h5.create_dataset("subject", (n_img,), "i4")
        d_has = h5.create_dataset("has_bone", (n_img,), "u1")
        d_shape = h5.create_dataset("shape_index", (n_img,), "i4")
        if shapes is not None:  # in the span, shape_sd gives the truth exactly
            h5.create_dataset("shapes", data=shapes.astype(np.float32), compression="lzf")
        h5.attrs["config"] = json.dumps(dataclasses.asdict(cfg))
        h5.attrs["shape_model"] = cfg.shape_model
        h5.attrs["shape_model_fingerprint"] = space.fingerprint
        h5.attrs["model_to_world"] = m2w
        h5.attrs["pixel_spacing_mm"] = camera.pixel_spacing_mm
        h5.attrs["frames"] = ("world = patient RAS+ mm centred on the mean shape's centroid; model = shape model "
                              "frame; canonical = points on the mean shape in the model frame")
        row = 0
        for s in tqdm(range(len(coeffs)), desc=f"{cfg.split} shapes", disable=not progress):
            verts_model = space.instance(coeffs[s]) if shapes is None else shapes[s]
            verts_world = verts_model @ m2w[:3, :3].T + m2w[:3, 3]
            ct, _labels = phantom_of(space, verts_model, cfg, seed=cfg.seed * 100003 + s)
            w2c = sample_world_to_cam(cfg.views_per_shape, cfg.protocol, rng, sod_mm)
            cams = camera.with_pose(torch.as_tensor(w2c))
            renderer = DrrRenderer(ct, camera, spacing_mm=cfg.render_spacing_mm, n_samples=cfg.n_samples,
                                   max_batch=4)
            with torch.no_grad():
                images = renderer(torch.as_tensor(w2c, dtype=torch.float32)).numpy()
            scene = raycasting_scene(verts_world, space.faces)
            for v in range(cfg.views_per_shape):
                tg = view_targets(space, verts_world, cams[v], scene=scene)
                d_img[row] = images[v]
                d_mask[row] = tg.mask if cfg.with_bone else 0
                d_can[row] = tg.canonical.astype(np.float16) if cfg.with_bone else 0
                d_has[row] = cfg.with_bone
                d_b[row] = coeffs[s]
                d_w2c[row] = w2c[v]
                d_m2c[row] = w2c[v] @ m2w
                d_K[row] = camera.K[0].numpy()
                d_subj[row] = subjects[s]
                d_shape[row] = s
                row += 1
        h5.attrs["seconds"] = time.monotonic() - t0
    log.info("wrote %s: %d images of %d shapes in %.0f s", out_path, n_img, len(coeffs), time.monotonic() - t0)
    return out_path


class ReconH5Dataset(Dataset):
    """Reads a file of :func:`generate_dataset` into memory.

    Items are dicts: ``image (1, H, W)`` float32 (augmented when ``augment`` is
    given), ``mask (H, W)`` float32, ``canonical (2, 3, H, W)`` float32 mm,
    ``shape_sd (K,)`` float32, ``has_bone`` float32 (0 for negatives; files
    without the field hold bone only), ``cam_rotation (3, 3)`` float32 (the
    rotation of ``model_to_cam``: the camera's axes in the model frame, for the
    loss's in-plane scale term), ``cam_source (3,)`` float32 (the X-ray source
    in the model frame, mm: where every pixel's ray starts, for the loss's
    along-ray weight), ``index`` int.

    Args:
        path: HDF5 file.
        augment: optional ``f(image (1, H, W)) -> image`` applied at load (e.g.
            :class:`XrayAugment`); it draws from torch's generator, which the
            training loop seeds.
        indices: optional subset of rows.
    """

    def __init__(self, path: str | Path, augment=None, indices=None):
        import h5py

        path = Path(path)
        try:
            with h5py.File(path, "r") as h5:
                rows = np.arange(len(h5["image"])) if indices is None else np.asarray(indices)
                self.image = torch.from_numpy(h5["image"][:][rows])
                self.mask = torch.from_numpy(h5["mask"][:][rows])
                self.canonical = torch.from_numpy(h5["canonical"][:][rows])
                self.shape_sd = torch.from_numpy(h5["shape_sd"][:][rows])
                m2c = torch.from_numpy(h5["model_to_cam"][:][rows])
                self.cam_rotation = m2c[:, :3, :3].float()
                self.cam_source = se3.invert(m2c)[:, :3, 3].float()  # the camera centre in the model frame
                has = h5["has_bone"][:][rows] if "has_bone" in h5 else np.ones(len(rows), np.uint8)
                self.has_bone = torch.from_numpy(has.astype(np.float32))
                self.config = json.loads(h5.attrs["config"])
        except (OSError, KeyError) as exc:
            raise InputError(f"not a reconstruction dataset ({exc})", path) from exc
        self.path, self.augment = path, augment

    def __len__(self) -> int:
        return len(self.image)

    def __getitem__(self, i: int) -> dict:
        img = self.image[i][None].float()
        if self.augment is not None:
            img = self.augment(img)
        return {"image": img, "mask": self.mask[i].float(), "canonical": self.canonical[i].float(),
                "shape_sd": self.shape_sd[i].float(), "has_bone": self.has_bone[i],
                "cam_rotation": self.cam_rotation[i], "cam_source": self.cam_source[i], "index": i}


class XrayAugment:
    """Load-time domain randomisation of one image ``(1, H, W)``: scaled to [0, 1]
    and randomised by :class:`xrecon.sim.augment.Augmenter` (seed 002's inversion,
    jitter, erasing + gamma, noise, blur; ``film=True``: also collimation,
    :data:`xrecon.sim.augment.FILM_AUGMENT`, for film-like scenes)."""

    def __init__(self, film: bool = False):
        from xrecon.sim.augment import DEFAULT_AUGMENT, FILM_AUGMENT, Augmenter

        self.augmenter = Augmenter(FILM_AUGMENT if film else DEFAULT_AUGMENT)
        #: what the run records as its augmentation
        self.__name__ = f"xrecon.sim.augment.Augmenter({'FILM_AUGMENT' if film else 'DEFAULT_AUGMENT'})"

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        from xrecon.sim.augment import normalise_image

        return self.augmenter(normalise_image(image[None]))[0]
