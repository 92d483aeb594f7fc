"""Training data of RayEmb: the reconstruction datasets, read by subject.

RayEmb trains on the files of :func:`xrecon.methods.recon.data.generate_dataset`
(the open-world pelvis population: shape-model subjects in or beyond the span,
bone or film-like phantoms, simulated by the project's DRR renderer), so it
shares their subject splits (train / val / test of the bundled shape model) with
the reconstruction benchmarks: every method is scored on the same unseen
subjects. Each file row holds an image, its ``world_to_cam`` and ``K``; each
subject's true bone mesh is its instance of the shape model (``shape_sd``) or,
beyond the span, the ``shapes`` array; ``model_to_world`` places it in the
patient frame the poses refer to.

One item is one subject: ``views`` of its images (drawn at random from the
subject's rows; the first ``views`` rows when ``deterministic``), ``landmarks``
3D points drawn anywhere on, inside and around its bone
(:func:`~xrecon.methods.rayemb.landmarks.mesh_landmark_candidates`), and their
pixels in every view. Landmarks are re-drawn each time an item is read.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from xrecon.errors import InputError
from xrecon.methods.rayemb.landmarks import DEFAULT_MIX, mesh_landmark_candidates
from xrecon.methods.rayemb.loss import inside_image

log = logging.getLogger(__name__)


class RayEmbDataset(Dataset):
    """Subjects of one reconstruction HDF5 file.

    Items: ``image (V, 1, H, W)`` float32 (augmented when ``augment`` is given),
    ``uv (L, V, 2)`` float32 pixels of the landmarks, ``valid (L, V)`` float32
    (1 = the landmark projects inside the view, ``margin_px`` from the border),
    ``landmarks (L, 3)`` patient frame mm, ``index``.

    Args:
        path: a file of :func:`xrecon.methods.recon.data.generate_dataset`.
        views: views per item (subjects with fewer rows are skipped).
        landmarks: landmarks per item.
        augment: ``f(image (1, H, W)) -> image`` applied per view at load.
        deterministic: the same views and landmarks every time (validation):
            seeded by the item index.
        mix: shares of surface / interior / box landmarks.
        n_candidates: points drawn per subject once; items draw from them
            (drawn again when ``deterministic`` is False, every
            ``n_candidates // landmarks`` reads).
    """

    def __init__(self, path: str | Path, views: int = 5, landmarks: int = 16, augment=None,
                 deterministic: bool = False, mix=DEFAULT_MIX, margin_px: float = 1.0, n_candidates: int = 512):
        import h5py

        from shape_models.bundled import load_model
        from xrecon.methods.recon.shape import ShapeSpace

        path = Path(path)
        try:
            with h5py.File(path, "r") as h5:
                self.image = torch.from_numpy(h5["image"][:])
                self.world_to_cam = h5["world_to_cam"][:].astype(np.float64)
                self.K = h5["K"][:].astype(np.float64)
                shape_index = h5["shape_index"][:].astype(np.int64)
                shape_sd = h5["shape_sd"][:]
                self.shapes = h5["shapes"][:].astype(np.float64) if "shapes" in h5 else None
                has_bone = h5["has_bone"][:] if "has_bone" in h5 else np.ones(len(shape_index), np.uint8)
                self.model_to_world = np.asarray(h5.attrs["model_to_world"], np.float64)
                self.config = json.loads(h5.attrs["config"])
        except (OSError, KeyError) as exc:
            raise InputError(f"not a reconstruction dataset ({exc})", path) from exc
        self.space = ShapeSpace.from_shape_model(load_model(self.config["shape_model"]))
        self.shape_sd = shape_sd
        rows = {}
        for r, s in enumerate(shape_index):
            if has_bone[r]:
                rows.setdefault(int(s), []).append(r)
        self.subjects = [(s, np.asarray(r)) for s, r in sorted(rows.items()) if len(r) >= views]
        if not self.subjects:
            raise InputError(f"no subject with {views} views with bone", path)
        self.path, self.views, self.n_landmarks = path, int(views), int(landmarks)
        self.augment, self.deterministic, self.mix = augment, bool(deterministic), mix
        self.margin_px, self.n_candidates = float(margin_px), int(n_candidates)
        self._candidates: dict[int, tuple[np.ndarray, int]] = {}
        self.size = int(self.image.shape[-1])

    def __len__(self) -> int:
        return len(self.subjects)

    def vertices_world(self, shape: int, row: int) -> np.ndarray:
        """``(V, 3)`` the subject's true mesh vertices in the patient frame (mm)."""
        verts = self.shapes[shape] if self.shapes is not None else self.space.instance(self.shape_sd[row])
        T = self.model_to_world
        return verts @ T[:3, :3].T + T[:3, 3]

    def _landmarks(self, i: int, rng: np.random.Generator) -> np.ndarray:
        shape, rows = self.subjects[i]
        cached = self._candidates.get(i)
        if cached is None or (not self.deterministic and cached[1] <= 0):
            seed = int(rng.integers(1 << 31)) if not self.deterministic else 7919 * i + 1
            pts = mesh_landmark_candidates(self.vertices_world(shape, int(rows[0])), self.space.faces,
                                           self.n_candidates, np.random.default_rng(seed), self.mix)
            cached = (pts, self.n_candidates // max(self.n_landmarks, 1))
        pts, uses = cached
        self._candidates[i] = (pts, uses - 1)
        return pts

    def __getitem__(self, i: int) -> dict:
        shape, rows = self.subjects[i]
        if self.deterministic:
            rng = np.random.default_rng(1000003 * i + 17)
            chosen = rows[: self.views]
        else:
            rng = np.random.default_rng(int(torch.randint(0, 1 << 31, ()).item()))
            chosen = rng.choice(rows, self.views, replace=False)
        cand = self._landmarks(i, rng)
        w2c, K = self.world_to_cam[chosen], self.K[chosen]
        pc = np.einsum("vij,nj->nvi", w2c[:, :3, :3], cand) + w2c[None, :, :3, 3]
        h = np.einsum("vij,nvj->nvi", K, pc)
        uv = h[..., :2] / h[..., 2:3]
        valid = inside_image(torch.from_numpy(uv), self.size, self.size, self.margin_px).numpy() & (pc[..., 2] > 0)
        # prefer landmarks seen in many views (a query and at least two templates)
        order = np.lexsort((rng.random(len(cand)), -valid.sum(1)))[: self.n_landmarks]
        images = self.image[chosen][:, None].float()
        if self.augment is not None:
            images = torch.stack([self.augment(img) for img in images])
        return {"image": images, "uv": torch.from_numpy(uv[order]).float(),
                "valid": torch.from_numpy(valid[order]).float(),
                "landmarks": torch.from_numpy(cand[order]).float(), "index": i}
