"""Shape populations that ship inside installed packages, and the ready models.

Two sources (see ``/work/shared/DATA.md``; both are read from the installed
package at run time, nothing is copied or downloaded):

* **articulated-ssm** 0.2.0: a *coupled* PCA model of pelvis (both hemipelves),
  femur, tibia and fibula, one per side (``left``: 324 subjects, ``right``: 327),
  21,206 vertices, 10 modes, with every training subject's scores
  (``projectedWeights``). :func:`load_coupled` reads it;
  :func:`coupled_instances` rebuilds the subjects' meshes (all bones or a subset);
  :func:`mode1_report` measures what mode 1 is.
* **musculoskeletal-models** 0.2.4: the 26-subject LLP26 lower-limb model
  (pelvis, femur, patella, tibia-fibula nodes; no faces). :func:`load_llp26`.

Frame of the articulated-ssm meshes (measured from its landmarks): the pelvis
anatomical frame, origin midway between the two ASIS, +x anterior, +y superior,
+z to the subject's right (ISB convention), mm.

Ready models (built by :func:`build_ready_models`, ``python -m shape_models.bundled``)
live in ``shape_models/data/`` and load with :func:`load_model` (``"pelvis"``,
``"femur"``). Each is a PCA re-fitted on the rebuilt instances of the *train*
subjects of a fixed split (:func:`subject_split`), so the test subjects were
not used to build it. The file also holds every subject's scores under that
model (``extra_arrays_["subject_scores"]``, ``(n_subjects, K)`` SD) and the split
(``metadata_["split"]``); :func:`subject_shapes` rebuilds any split.

Caveat (documented in docs/shape_models.md): the published model keeps only 10
modes, so every rebuilt instance lies in the same 10-D subspace. A PCA of the
train subjects spans that subspace, so held-out instances are represented
exactly by the 10-mode refit: held-out tests measure the fitting methods (partial
data, noise, pose, projection), not how well the model generalises to new
anatomy. LLP26 (26 real subjects, all modes) is the honest population for
generalisation.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from xrecon.errors import InputError
from shape_models.model import ShapeModel
from shape_models.procrustes import align_points, apply_transform, centroid_size

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"

#: Subject split of the ready models: fraction of subjects in train / val / test
#: and the seed of the permutation of subject indices (column of projectedWeights).
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_SEED = 0

ARTICULATED_FRAME = ("articulated-ssm pelvis anatomical frame: origin midway between the ASIS, "
                     "+x anterior, +y superior, +z right (ISB), mm")

#: Ready models: name -> (side of the coupled model, bones, file stem).
READY_MODELS = {
    "pelvis": ("left", ("Pel_L", "Pel_R"), "pelvis_articulated_ssm_left"),
    "femur": ("left", ("Fem_L",), "femur_left_articulated_ssm"),
}


# ---------------------------------------------------------------------------- articulated-ssm
@dataclass(frozen=True)
class CoupledSSM:
    """The articulated-ssm coupled model of one side, as published.

    Attributes:
        side: ``"left"`` or ``"right"``.
        mean: ``(V, 3)`` mean vertices, mm (V = 21,206).
        faces: ``(F, 3)`` triangles of the mean mesh (F = 42,404).
        modes: ``(K, 3V)`` unit modes (rows), interleaved x, y, z per vertex (K = 10).
        variances: ``(K,)`` mode variances, mm^2.
        scores: ``(S, K)`` training subjects' scores, mm (not SD).
        bone_vertices: bone name -> (first, end) vertex range.
        bone_faces: bone name -> (first, end) face range.
        landmarks: ``{name: vertex id}`` in the coupled mesh (ASIS/PSIS of each
            hemipelvis, femoral epicondyles and condyle bottoms, tibia/fibula
            landmarks of the package's ``coupled_ssm_regions_local`` lists).
        source: path of the ``.pc.npz`` file.
    """

    side: str
    mean: np.ndarray
    faces: np.ndarray
    modes: np.ndarray
    variances: np.ndarray
    scores: np.ndarray
    bone_vertices: dict
    bone_faces: dict
    landmarks: dict
    source: str

    @property
    def n_subjects(self) -> int:
        return len(self.scores)


def _articulated_dir() -> Path:
    try:
        import articulated_ssm_both_sides as pkg
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InputError("the articulated-ssm package is not installed (pip install articulated-ssm==0.2.0)") from exc
    return Path(list(pkg.__path__)[0])


def _read_ranges(path: Path) -> dict:
    ranges = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            ranges[parts[0]] = (int(parts[1]), int(parts[2]))
    if not ranges:
        raise InputError("no bone ranges found", path)
    return ranges


def _read_named_ids(path: Path) -> dict:
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2:
            out[parts[0]] = int(parts[1])
    return out


def _coupled_landmarks(root: Path, side: str, bone_vertices: dict) -> dict:
    """Landmark vertex ids in the coupled mesh.

    The package lists them per bone with *local* vertex numbers. The pelvis list
    (ASIS, PSIS) uses the same local numbers for both hemipelves (mirrored
    meshes): checked on the mean, local 548 is the ASIS of each half (x ~ 0,
    |z| ~ 97 mm) and 3234 the PSIS (x ~ -116 mm).
    """
    regions = root / "coupled_ssm_regions_local"
    out = {}
    pel = _read_named_ids(regions / "pelvis" / f"local_landmark_node_nrs_{side}.txt")
    for half, tag in (("Pel_L", "left"), ("Pel_R", "right")):
        first = bone_vertices[half][0]
        for name, local in pel.items():
            out[f"{name.replace('_VERTEX', '')}_{tag}"] = first + local
    sfx = "L" if side == "left" else "R"
    for bone, folder in ((f"Fem_{sfx}", "femur"), (f"Tib_{sfx}", "tibiafibula")):
        path = regions / folder / f"local_landmark_node_nrs_{side}.txt"
        if not path.is_file() or bone not in bone_vertices:
            continue
        first, end = bone_vertices[bone]
        for name, local in _read_named_ids(path).items():
            if 0 <= local < end - first:
                out[f"{folder}_{name.replace('_VERTEX', '')}"] = first + local
    return out


@lru_cache(maxsize=2)
def load_coupled(side: str = "left") -> CoupledSSM:
    """Read the articulated-ssm coupled model of ``side`` from the installed package."""
    import trimesh

    if side not in ("left", "right"):
        raise InputError(f"side must be 'left' or 'right', got {side!r}")
    root = _articulated_dir()
    folder = root / "coupled_ssm" / "pel_fem_tib_fib_both_side"
    pc = folder / f"shape_model_{side}_side.pc.npz"
    try:
        with np.load(pc, allow_pickle=True) as z:
            mean = np.asarray(z["mean"], np.float64).reshape(-1, 3)
            modes = np.asarray(z["modes"], np.float64).T
            variances = np.asarray(z["weights"], np.float64)
            scores = np.asarray(z["projectedWeights"], np.float64).T
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"cannot read the coupled model ({exc})", pc) from exc
    ply = folder / f"shape_model_{side}_side_mean.ply"
    mesh = trimesh.load(ply, process=False)
    if len(mesh.vertices) != len(mean):
        raise InputError(f"mean mesh has {len(mesh.vertices)} vertices, the model {len(mean)}", ply)
    bone_vertices = _read_ranges(folder / f"Coupled_SSM_node_nrs_per_bone_mesh_{side}.txt")
    bone_faces = _read_ranges(folder / f"Coupled_SSM_face_nrs_per_bone_mesh_{side}.txt")
    # the face file names the side's bones "_L" in both files; key faces by the vertex-file names
    bone_faces = dict(zip(bone_vertices.keys(), bone_faces.values()))
    return CoupledSSM(side, mean, np.asarray(mesh.faces, np.int64), modes, variances, scores, bone_vertices,
                      bone_faces, _coupled_landmarks(root, side, bone_vertices), str(pc))


def bone_names(side: str = "left") -> list[str]:
    """Bone names of the coupled model of ``side`` (e.g. ``Pel_L, Pel_R, Fem_L, Fib_L, Tib_L``)."""
    return list(load_coupled(side).bone_vertices)


def _bone_selection(coupled: CoupledSSM, bones) -> tuple[np.ndarray, np.ndarray]:
    unknown = [b for b in bones if b not in coupled.bone_vertices]
    if unknown:
        raise InputError(f"unknown bone(s) {unknown}; the {coupled.side} model has {list(coupled.bone_vertices)}")
    vids = np.concatenate([np.arange(*coupled.bone_vertices[b]) for b in bones])
    new_id = np.full(len(coupled.mean), -1, np.int64)
    new_id[vids] = np.arange(len(vids))
    fids = np.concatenate([np.arange(*coupled.bone_faces[b]) for b in bones])
    faces = new_id[coupled.faces[fids]]
    if (faces < 0).any():
        raise InputError(f"faces of {bones} reference vertices of other bones")
    return vids, faces


def coupled_instances(side: str = "left", bones=None, subjects=None) -> tuple[np.ndarray, np.ndarray, dict]:
    """Rebuild training subjects of the coupled model: ``mean + scores @ modes``.

    Args:
        side: ``"left"`` or ``"right"``.
        bones: bone names to keep (default all), e.g. ``("Pel_L", "Pel_R")``.
        subjects: subject indices (rows of the published scores; default all).

    Returns:
        ``vertices (S, V_b, 3)`` mm in the articulated-ssm frame, ``faces (F_b, 3)``,
        ``landmarks {name: vertex id}`` renumbered to the selection.
    """
    c = load_coupled(side)
    bones = tuple(c.bone_vertices) if bones is None else tuple(bones)
    vids, faces = _bone_selection(c, bones)
    scores = c.scores if subjects is None else c.scores[np.asarray(subjects, np.int64)]
    cols = (3 * vids[:, None] + np.arange(3)).ravel()
    verts = c.mean[vids][None] + (scores @ c.modes[:, cols]).reshape(len(scores), len(vids), 3)
    pos = {int(v): i for i, v in enumerate(vids)}
    landmarks = {n: pos[v] for n, v in c.landmarks.items() if v in pos}
    return verts, faces, landmarks


def mode1_report(side: str = "left") -> dict:
    """What mode 1 of the coupled model does, per bone.

    For each bone, compares the mean with the mean moved by +1 SD of mode 1:
    ``size_ratio`` (centroid size ratio), ``cos_scale`` (cosine between the
    bone's mode-1 displacement and pure isotropic scaling about the bone's
    centroid), ``rms_displacement_mm`` and ``rms_after_similarity_mm`` (what is
    left once a similarity transform is removed). Also the share of variance.
    """
    c = load_coupled(side)
    sd = np.sqrt(c.variances[0])
    disp_all = (sd * c.modes[0]).reshape(-1, 3)
    out = {"variance_share": float(c.variances[0] / c.variances.sum()), "sd_mm": float(sd), "bones": {}}
    for bone, (a, b) in c.bone_vertices.items():
        x0 = c.mean[a:b]
        d = disp_all[a:b]
        x1 = x0 + d
        centred = x0 - x0.mean(axis=0)
        d_c = d - d.mean(axis=0)
        cos = float((d_c * centred).sum() / (np.linalg.norm(d_c) * np.linalg.norm(centred)))
        back = apply_transform(align_points(x1, x0, "similarity"), x1)
        out["bones"][bone] = {
            "size_ratio": float(centroid_size(x1) / centroid_size(x0)),
            "cos_scale": cos,
            "rms_displacement_mm": float(np.sqrt((d**2).sum(axis=1).mean())),
            "rms_after_similarity_mm": float(np.sqrt(((back - x0) ** 2).sum(axis=1).mean())),
        }
    return out


def subject_split(n_subjects: int, fractions=SPLIT_FRACTIONS, seed: int = SPLIT_SEED) -> dict:
    """Fixed split of subject indices ``0 .. n_subjects-1`` into train / val / test.

    A permutation from ``numpy.random.default_rng(seed)``; the test and val sizes
    are ``round(fraction * n)``, train takes the rest. Indices are sorted.
    """
    if n_subjects < 3:
        raise InputError(f"need at least 3 subjects to split, got {n_subjects}")
    perm = np.random.default_rng(seed).permutation(n_subjects)
    n_test = max(1, int(round(fractions[2] * n_subjects)))
    n_val = max(1, int(round(fractions[1] * n_subjects)))
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return {"train": sorted(train.tolist()), "val": sorted(val.tolist()), "test": sorted(test.tolist()),
            "seed": int(seed), "fractions": list(fractions)}


def build_coupled_submodel(side: str, bones, subjects=None, n_components: int | float | None = 10,
                           procrustes: str | None = "rigid", name: str | None = None) -> ShapeModel:
    """A per-bone model: PCA re-fitted on the rebuilt instances of ``subjects``.

    ``procrustes="rigid"`` (default) removes each bone's pose variation (the
    coupled model also varies the femur's position relative to the pelvis,
    which a per-bone model must not confuse with shape), keeps the size (mode 1
    is then mostly size, as in the published model) and keeps the
    articulated-ssm frame (the Procrustes mean is placed on the plain mean).
    """
    verts, faces, landmarks = coupled_instances(side, bones, subjects)
    c = load_coupled(side)
    meta = {"source": f"articulated-ssm 0.2.0 coupled model ({Path(c.source).name}), bones {list(bones)}, "
                      f"PCA re-fitted on {len(verts)} rebuilt subjects",
            "frame": ARTICULATED_FRAME, "units": "mm", "name": name or "+".join(bones), "side": side,
            "bones": list(bones)}
    return ShapeModel(n_components=n_components, procrustes=procrustes).fit(verts, faces, landmarks, meta)


# ---------------------------------------------------------------------------- LLP26
def load_llp26(bone: str | None = None) -> ShapeModel:
    """The musculoskeletal-models LLP26 lower-limb model (26 subjects, all modes).

    Args:
        bone: ``None`` (whole limb, 3225 nodes) or one of ``"pelvis"``, ``"femur"``,
            ``"patella"``, ``"tibiafibula"``: the node range of that bone, re-fitted
            as a PCA of the 26 rebuilt subjects (exact: every mode is kept).

    Returns a :class:`ShapeModel` without faces (the nodes are control points of
    curved elements: use them as point clouds), frame as published, mm.
    """
    try:
        import musculoskeletal
    except ImportError as exc:  # pragma: no cover - a declared dependency
        raise InputError("musculoskeletal-models is not installed (pip install musculoskeletal-models==0.2.4)") from exc
    path = Path(list(musculoskeletal.__path__)[0]) / "models" / "shape_models" / "LLP26_rigid.pc"
    try:
        with open(path, "rb") as fh:
            d = pickle.load(fh, encoding="latin1")
        mean_blocks = np.asarray(d["mean"], np.float64)
        modes_blocks = np.asarray(d["modes"], np.float64)
        var = np.asarray(d["weights"], np.float64)
        scores = np.asarray(d["projectedWeights"], np.float64).T
    except (OSError, KeyError, pickle.UnpicklingError) as exc:
        raise InputError(f"cannot read the LLP26 model ({exc})", path) from exc
    n = len(mean_blocks) // 3
    # published layout [x(n), y(n), z(n)] -> interleaved x, y, z per node
    mean = mean_blocks.reshape(3, n).T
    modes = modes_blocks.reshape(3, n, -1).transpose(2, 1, 0).reshape(-1, 3 * n)
    keep = var > 1e-9 * var.sum()
    ranges = {"pelvis": (0, 1946), "femur": (1946, 2580), "patella": (2580, 2654), "tibiafibula": (2654, 3225)}
    meta = {"source": f"musculoskeletal-models 0.2.4 {path.name}", "frame": "LLP26 model frame as published, mm",
            "units": "mm", "name": "LLP26", "node_ranges": ranges}
    if bone is None:
        return ShapeModel.from_pca(mean, modes[keep], var[keep], None, None, scores[:, keep] / np.sqrt(var[keep]),
                                   None, meta)
    if bone not in ranges:
        raise InputError(f"unknown LLP26 bone {bone!r}; one of {list(ranges)}")
    a, b = ranges[bone]
    shapes = (mean.reshape(1, -1) + scores[:, keep] @ modes[keep]).reshape(len(scores), n, 3)[:, a:b]
    meta.update({"name": f"LLP26 {bone}", "bone": bone})
    return ShapeModel(procrustes=None).fit(shapes, metadata=meta)


# ---------------------------------------------------------------------------- ready models
def model_path(name: str) -> Path:
    if name not in READY_MODELS:
        raise InputError(f"unknown bundled model {name!r}; one of {list(READY_MODELS)}")
    return DATA_DIR / f"{READY_MODELS[name][2]}.npz"


def load_model(name: str = "pelvis") -> ShapeModel:
    """A ready model from ``shape_models/data`` (``"pelvis"`` or ``"femur"``).

    Built on the train subjects of :func:`subject_split`; the split is in
    ``metadata_["split"]`` and all subjects' scores in
    ``extra_arrays_["subject_scores"]``.
    """
    path = model_path(name)
    if not path.is_file():
        raise InputError("bundled model file missing; rebuild with `python -m shape_models.bundled`", path)
    return ShapeModel.load(path)


def subject_shapes(model: ShapeModel, split: str = "test") -> tuple[np.ndarray, list[int]]:
    """Rebuilt subject meshes ``(S, V, 3)`` (rigidly aligned to the model, model frame) of one split (``train``, ``val``, ``test``
    or ``all``) of a ready model, and their subject indices."""
    scores = model.extra_arrays_.get("subject_scores")
    if scores is None or "split" not in model.metadata_:
        raise InputError("this model carries no subject scores / split (not a ready bundled model)")
    ids = list(range(len(scores))) if split == "all" else list(model.metadata_["split"][split])
    return model.inverse_transform(scores[ids]), ids


def build_ready_models(out_dir: str | Path = DATA_DIR) -> dict:
    """Build the ready pelvis and femur models (train split only) and their model cards."""
    from xrecon.io import atomic_write_text

    out_dir = Path(out_dir)
    written = {}
    for name, (side, bones, stem) in READY_MODELS.items():
        c = load_coupled(side)
        split = subject_split(c.n_subjects)
        split["subject_index"] = f"row of projectedWeights.T in {Path(c.source).name} (articulated-ssm 0.2.0)"
        model = build_coupled_submodel(side, bones, split["train"], n_components=10, procrustes="rigid", name=name)
        all_verts, _, _ = coupled_instances(side, bones)
        all_aligned, _ = model.align(all_verts)
        subject_scores = model.transform(all_aligned, align=False)
        # exactness check of the caveat above: test subjects lie in the train subspace
        rec = model.inverse_transform(subject_scores[split["test"]])
        resid = float(np.abs(rec - all_aligned[split["test"]]).max())
        model.metadata_.update({"split": split, "max_test_reconstruction_error_mm": resid,
                                "mode1": "mostly isotropic size (see mode1_report)"})
        path = out_dir / f"{stem}.npz"
        model.save(path, dtype=np.float32, extra_arrays={"subject_scores": subject_scores.astype(np.float32)})
        card = {k: v for k, v in model.metadata_.items()}
        card.update({"file": path.name, "n_vertices": model.n_vertices_, "n_faces": len(model.faces_),
                     "n_components": model.n_components_,
                     "explained_variance_mm2": model.explained_variance_.round(3).tolist(),
                     "explained_variance_ratio": model.explained_variance_ratio_.round(5).tolist(),
                     "landmarks": dict(zip(model.landmark_names_, model.landmark_vertex_ids_.tolist())),
                     "mode1_report": {b: v for b, v in mode1_report(side)["bones"].items() if b in bones}})
        text = json.dumps(card, indent=1)
        text = re.sub(r"\[[\d,\s.e-]+\]", lambda m: " ".join(m.group(0).split()), text)  # one line per number list
        atomic_write_text(out_dir / f"{stem}.json", text + "\n")
        for p in (path, out_dir / f"{stem}.json"):
            os.chmod(p, 0o644)
        written[name] = path
        log.info("%s: %s (%.1f MB), test reconstruction error %.2g mm", name, path, path.stat().st_size / 1e6, resid)
    return written


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    build_ready_models()
