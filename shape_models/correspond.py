"""Bring meshes that are not in correspondence into correspondence with a template.

Each target mesh (any vertex count and order, any frame, any size) gets a copy of
the template deformed onto it, so vertex ``i`` means the same anatomical point
in every result and a :class:`~shape_models.model.ShapeModel` can be built.

Per target:

1. **Similarity alignment** of the template to the target: multi-start trimmed
   similarity ICP from the 24 pairings of principal axes (complete surfaces
   have reliable principal axes), see :func:`shape_models.fit3d.coarse_align`.
2. **Affine ICP** (both correspondence directions below), which takes up the
   global stretches and shears, tangential parts included.
3. **Non-rigid registration**: a smooth displacement field on the template,
   carried by ``n_control_points`` Gaussian radial basis nodes (a motion-coherence
   field as in coherent point drift), fitted by alternating correspondences:
   template vertices -> closest target surface point and target samples ->
   closest template vertex (both directions, so the template neither shrinks
   into part of the target nor leaves parts uncovered), then a ridge-regularised
   least-squares update of the node displacements. The kernel width anneals
   through ``sigmas_mm`` (coarse to fine). Optionally the vertices are finally
   projected onto the target surface.

Residuals per shape (:class:`CorrespondenceResult`): symmetric surface distances
between the registered template and the target (mm).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xrecon.errors import InputError
from shape_models.procrustes import apply_transform

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistrationConfig:
    """Settings of :func:`register_template`.

    Defaults chosen by ``python benchmarks/bench_ssm_correspond.py`` (see
    ``docs/shape_models.md``): the affine stage, 12 rounds per kernel width and
    light damping (``ridge=0.02``) are what lets the template follow stretches
    *along* the surface (closest-point matching converges slowly in tangential
    directions; too few rounds leave the vertices slid and the shape modes shrunk
    and mixed).

    Attributes:
        n_control_points: Gaussian nodes carrying the displacement field.
        sigmas_mm: kernel widths, coarse to fine; relative to a template of the
            target's size (the similarity stage scales the template first).
        iters_per_level: correspondence / update rounds per width.
        ridge: with ``regulariser="ridge"``, damping of each node update (relative to the
            data term): every round solves ``min |W du - r|^2 + ridge' |du|^2`` for the
            current residuals ``r``, so the field keeps converging over the rounds.
        n_target_samples: surface samples of the target for the target -> template term.
        project_final: move every vertex onto the closest target surface point at the end.
        affine_iters: rounds of affine ICP (both correspondence directions) between the
            similarity and the non-rigid stage (0 skips it).
        regulariser: ``"ridge"`` (above) or ``"laplacian"``: each width fits the whole node
            field of that width with the penalty ``laplacian_weight |L u|^2``, ``L`` the
            affine-reconstruction Laplacian of the nodes (free local stretches, penalised
            bending); measured no better than ``"ridge"`` on the pelvis benchmark.
        laplacian_weight: relative weight of that penalty (scaled by the data term's trace).
        laplacian_neighbours: nodes used to reconstruct each node for ``L``.
        bootstrap_modes: in :func:`build_model_from_meshes`, a second pass: a model of the
            first registrations with this many modes is fitted to each target
            (:func:`shape_models.fit3d.fit_points` from the first pass's pose), then refined
            non-rigidly with ``bootstrap_sigmas_mm`` (0 disables; measured: +0.003 / +0.006 |cos|
            of modes 2-3 for about 6x the time with the earlier 4-round registration, so off by default).
        bootstrap_rounds: how many times that second pass is repeated (each on the previous result).
        seed: for sampling.
    """

    n_control_points: int = 400
    sigmas_mm: tuple = (60.0, 40.0, 25.0, 15.0, 10.0)
    bootstrap_modes: int = 0
    bootstrap_rounds: int = 2
    bootstrap_sigmas_mm: tuple = (15.0, 10.0)
    iters_per_level: int = 12
    ridge: float = 0.02
    n_target_samples: int = 20000
    project_final: bool = True
    affine_iters: int = 20
    regulariser: str = "ridge"
    laplacian_weight: float = 100.0
    laplacian_neighbours: int = 10
    seed: int = 0


@dataclass
class CorrespondenceResult:
    """One target registered.

    Attributes:
        vertices: ``(V_template, 3)`` template vertices placed on the target, in the target's frame, mm.
        template_to_target: ``(4, 4)`` similarity of the first (similarity) step.
        assd_mm / hd95_mm / max_mm: residual surface distances to the target.
        success / reason: ``False`` with a reason when the residual is far above the kernel scale.
        source: where the target came from (file name or index).
    """

    vertices: np.ndarray
    template_to_target: np.ndarray
    assd_mm: float
    hd95_mm: float
    max_mm: float
    success: bool
    reason: str = ""
    source: str = ""


def check_mesh(vertices, faces, source: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate a triangle mesh ``(vertices (V, 3), faces (F, 3))``; returns float64 / int64 arrays."""
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces) if faces is not None else np.zeros((0, 3))
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0:
        raise InputError("mesh has no faces (a surface mesh with triangles is needed, not a point cloud)", source)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) < 4:
        raise InputError(f"mesh needs (V, 3) vertices with V >= 4, got shape {v.shape}", source)
    if not np.isfinite(v).all():
        raise InputError("mesh vertices hold NaN or inf", source)
    f = f.astype(np.int64)
    if f.min() < 0 or f.max() >= len(v):
        raise InputError("mesh faces index missing vertices", source)
    return v, f


def load_mesh(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a triangle mesh (PLY, STL, OBJ, OFF, ...) with trimesh; validated."""
    import trimesh

    path = Path(path)
    if not path.is_file():
        raise InputError("no such mesh file", path)
    try:
        mesh = trimesh.load(path, process=False)
    except Exception as exc:  # trimesh raises many types for unreadable files
        raise InputError(f"cannot read mesh ({exc})", path) from exc
    if isinstance(mesh, trimesh.Scene):
        mesh = mesh.dump(concatenate=True) if mesh.geometry else trimesh.Trimesh()
    faces = getattr(mesh, "faces", None)
    return check_mesh(getattr(mesh, "vertices", np.zeros((0, 3))), faces, path)


def _closest(vertices, faces, query):
    from shape_models.surface import closest_surface_points

    return closest_surface_points(vertices, faces, query)[2]


def register_template(template_vertices, template_faces, target_vertices, target_faces,
                      config: RegistrationConfig = RegistrationConfig(), source: str = "") -> CorrespondenceResult:
    """Deform the template ``(V, 3), (F, 3)`` onto the target mesh (see module doc)."""
    from shape_models.fit3d import Fit3DConfig, coarse_align
    from shape_models.synthetic import sample_surface_normals
    from xrecon.metrics.shape import surface_distance

    tv, tf = check_mesh(template_vertices, template_faces, "template")
    gv, gf = check_mesh(target_vertices, target_faces, source or "target")
    rng = np.random.default_rng(config.seed)

    # 1. similarity alignment (complete surfaces: principal axes multi-start ICP)
    sub_t = tv[rng.choice(len(tv), min(len(tv), 1500), replace=False)]
    target_pts, _ = sample_surface_normals(gv, gf, config.n_target_samples, seed=config.seed)
    sub_g = target_pts[rng.choice(len(target_pts), 1500, replace=False)]
    cands = coarse_align(sub_t, sub_g, Fit3DConfig(n_random_starts=0, n_candidates=4, coarse_iters=40,
                                                   trim_fraction=0.0, seed=config.seed))
    template_to_target = cands[0][1]
    v = apply_transform(template_to_target, tv)
    scale = float(np.cbrt(np.linalg.det(template_to_target[:3, :3])))

    # 2. affine (optional), then non-rigid
    if config.affine_iters > 0:
        moved, affine = affine_to_target(v, gv, gf, target_pts, config.affine_iters)
        sv = np.linalg.svd(affine[:3, :3], compute_uv=False)
        if np.linalg.det(affine[:3, :3]) > 0 and sv[0] / sv[-1] < 3.0:
            v = moved
        else:  # a flattened or mirrored template: keep the similarity start
            log.warning("%s: affine stage degenerate (singular values %s); skipped", source or "target",
                        np.round(sv, 3))
    v = deform_to_target(v, gv, gf, target_pts, config.sigmas_mm, config)
    d = surface_distance((v, tf), (gv, gf), n_samples=10000, seed=config.seed)
    success, reason = True, ""
    if d.assd > max(0.1 * config.sigmas_mm[-1], 0.01 * scale * _size(tv)):
        success, reason = False, f"residual ASSD {d.assd:.2f} mm is large for the template's size"
    return CorrespondenceResult(v, template_to_target, d.assd, d.hd95, d.hausdorff, success, reason, source)


def deform_to_target(vertices: np.ndarray, target_vertices: np.ndarray, target_faces: np.ndarray,
                     target_points: np.ndarray, sigmas_mm, config: RegistrationConfig = RegistrationConfig()
                     ) -> np.ndarray:
    """Non-rigid stage: a Gaussian node field on ``vertices (V, 3)`` (already aligned to the
    target) fitted to the target mesh and its surface samples ``target_points (N, 3)``
    through the kernel widths ``sigmas_mm``; returns the deformed ``(V, 3)``.

    ``target_vertices (Vt, 3), target_faces (Ft, 3)``: the target mesh. The node field is
    regularised as ``config.regulariser`` says (see :class:`RegistrationConfig`)."""
    if config.regulariser not in ("ridge", "laplacian"):
        raise InputError(f"regulariser must be 'ridge' or 'laplacian', got {config.regulariser!r}")
    rng = np.random.default_rng(config.seed)
    rest = np.asarray(vertices, np.float64)
    nodes = rest[rng.choice(len(rest), min(len(rest), config.n_control_points), replace=False)]
    d2 = ((rest[:, None, :] - nodes[None]) ** 2).sum(-1)  # (V, M)
    v = rest
    lap = _affine_laplacian(nodes, config.laplacian_neighbours) if config.regulariser == "laplacian" else None
    for sigma in sigmas_mm:
        W = np.exp(-d2 / (2 * sigma**2))
        W /= np.maximum(W.sum(axis=1, keepdims=True), 1e-12)  # partition of unity
        u = np.zeros((len(nodes), 3))
        A = W.T @ W
        if lap is None:
            lam = config.ridge * np.trace(A) / len(nodes)
            H = A + lam * np.eye(len(nodes))
        else:
            LtL = lap.T @ lap
            H = A + config.laplacian_weight * np.trace(A) / np.trace(LtL) * LtL \
                + 1e-6 * np.trace(A) / len(nodes) * np.eye(len(nodes))
        for _ in range(config.iters_per_level):
            cur = v + W @ u
            disp = _symmetric_residual(cur, target_vertices, target_faces, target_points)
            if lap is None:
                # node increments: min |W du - disp|^2 + lam |du|^2
                u += np.linalg.solve(H, W.T @ disp)
            else:
                # total node displacement of this level: min |W u - (W u_old + disp)|^2 + mu |L u|^2
                u = np.linalg.solve(H, W.T @ (W @ u + disp))
        v = v + W @ u
    if config.project_final:
        v = _closest(target_vertices, target_faces, v)
    return v


def _symmetric_residual(cur, target_vertices, target_faces, target_points):
    """Per-vertex displacement ``(V, 3)`` toward the target: the mean of the vertex -> closest
    surface point vector and of the target samples whose nearest vertex it is."""
    from scipy.spatial import cKDTree

    fwd = _closest(target_vertices, target_faces, cur) - cur  # template -> target surface
    _, j = cKDTree(cur).query(target_points)  # target samples -> nearest template vertex
    bwd = np.zeros_like(cur)
    cnt = np.zeros(len(cur))
    np.add.at(bwd, j, target_points - cur[j])
    np.add.at(cnt, j, 1.0)
    has = cnt > 0
    bwd[has] /= cnt[has, None]
    return np.where(has[:, None], 0.5 * (fwd + bwd), fwd)


def _affine_laplacian(nodes: np.ndarray, k: int) -> np.ndarray:
    """``(M, M)`` operator ``L`` with ``(L u)_j = u_j - sum_k w_jk u_k``, where ``w_j`` are the
    affine reconstruction weights of node ``j`` from its ``k`` nearest nodes (sum 1, least
    squares); ``L`` nearly annihilates every affine field, so penalising ``|L u|^2`` leaves
    global and local stretches free and penalises bending only."""
    from scipy.spatial import cKDTree

    _, nb = cKDTree(nodes).query(nodes, k + 1)
    L = np.eye(len(nodes))
    for j in range(len(nodes)):
        z = nodes[nb[j, 1:]] - nodes[j]  # (k, 3)
        G = z @ z.T
        G += 1e-3 * np.trace(G) * np.eye(k) / k
        w = np.linalg.solve(G, np.ones(k))
        L[j, nb[j, 1:]] -= w / w.sum()
    return L


def affine_to_target(vertices: np.ndarray, target_vertices: np.ndarray, target_faces: np.ndarray,
                     target_points: np.ndarray, n_iter: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Affine ICP of ``vertices (V, 3)`` (already similarity-aligned) onto the target mesh
    ``(target_vertices (Vt, 3), target_faces (Ft, 3))`` and its surface samples
    ``target_points (N, 3)``, with both correspondence directions (see :func:`deform_to_target`).

    Returns ``(moved vertices (V, 3), affine (4, 4))`` with ``moved = affine @ [v, 1]``.
    """
    v = np.asarray(vertices, np.float64)
    X = np.c_[v, np.ones(len(v))]  # (V, 4)
    M = np.zeros((4, 3))
    M[:3] = np.eye(3)
    for _ in range(n_iter):
        cur = X @ M
        M = np.linalg.lstsq(X, cur + _symmetric_residual(cur, target_vertices, target_faces, target_points),
                            rcond=None)[0]
    affine = np.eye(4)
    affine[:3, :3] = M[:3].T
    affine[:3, 3] = M[3]
    return X @ M, affine


def _size(vertices):
    c = vertices - vertices.mean(axis=0)
    return float(np.sqrt((c**2).sum(axis=1).mean()))


def register_meshes(template, meshes, config: RegistrationConfig = RegistrationConfig(), sources=None,
                    progress: bool = True) -> list[CorrespondenceResult]:
    """Register ``template = (vertices, faces)`` to every ``(vertices, faces)`` in ``meshes``."""
    from tqdm import tqdm

    sources = sources or [f"mesh {i}" for i in range(len(meshes))]
    out = []
    for (v, f), src in tqdm(list(zip(meshes, sources)), desc="registering", disable=not progress):
        out.append(register_template(template[0], template[1], v, f, config, str(src)))
        log.info("%s: ASSD %.2f mm, HD95 %.2f mm%s", src, out[-1].assd_mm, out[-1].hd95_mm,
                 "" if out[-1].success else f" ({out[-1].reason})")
    return out


def _bootstrap(template, meshes, shapes, first, config: RegistrationConfig, progress: bool):
    """Second pass: fit a model of the first registrations to every target, then refine."""
    from tqdm import tqdm

    from shape_models.fit3d import Fit3DConfig, fit_points
    from shape_models.model import ShapeModel
    from shape_models.synthetic import sample_surface_normals
    from xrecon.metrics.shape import surface_distance

    k = min(config.bootstrap_modes, len(shapes) - 1)
    prior = ShapeModel(n_components=k, procrustes="similarity").fit(shapes, template[1])
    out = []
    for i, ((gv, gf), r) in enumerate(tqdm(list(zip(meshes, first)), desc="bootstrap", disable=not progress)):
        pts, _ = sample_surface_normals(gv, gf, config.n_target_samples, seed=config.seed)
        start = np.linalg.inv(prior.training_to_model_[i])  # model frame -> this target (similarity)
        fit = fit_points(prior, pts[:: max(1, len(pts) // 3000)], Fit3DConfig(with_scale=True, noise_mm=0.5),
                         init_model_to_points=start)
        if not fit.success:
            out.append(r)
            continue
        v = deform_to_target(fit.vertices, gv, gf, pts, config.bootstrap_sigmas_mm, config)
        d = surface_distance((v, template[1]), (gv, gf), n_samples=10000, seed=config.seed)
        if d.assd > r.assd_mm + 0.05:  # keep the first pass when the second is not as close
            out.append(r)
            continue
        out.append(CorrespondenceResult(v, r.template_to_target, d.assd, d.hd95, d.hausdorff, r.success, r.reason,
                                        r.source))
    return out


def build_model_from_meshes(meshes, template=None, n_components: int | float | None = None,
                            procrustes: str | None = "similarity", config: RegistrationConfig = RegistrationConfig(),
                            sources=None, metadata: dict | None = None, progress: bool = True):
    """Build a :class:`ShapeModel` from meshes not in correspondence.

    Args:
        meshes: list of ``(vertices (V_i, 3), faces (F_i, 3))``.
        template: ``(vertices, faces)``; default the mesh with the median vertex count.
        n_components, procrustes: of the model (see :class:`ShapeModel`).

    Returns:
        ``(model, results)``: the model (faces and vertex layout of the template) and
        the per-shape :class:`CorrespondenceResult` (residuals).
    """
    from shape_models.model import ShapeModel

    if len(meshes) < 2:
        raise InputError(f"need at least 2 meshes to build a model, got {len(meshes)}")
    checked = [check_mesh(v, f, s) for (v, f), s in zip(meshes, sources or [None] * len(meshes))]
    if template is None:
        k = int(np.argsort([len(v) for v, _ in checked])[len(checked) // 2])
        template = checked[k]
        tname = (sources or [f"mesh {i}" for i in range(len(meshes))])[k]
    else:
        template = check_mesh(*template, "template")
        tname = "given template"
    results = register_meshes(template, checked, config, sources, progress)
    shapes = np.stack([r.vertices for r in results])
    if config.bootstrap_modes > 0 and len(shapes) >= 3:
        for _ in range(config.bootstrap_rounds):
            results = _bootstrap(template, checked, shapes, results, config, progress)
            shapes = np.stack([r.vertices for r in results])
    meta = {"source": f"built from {len(meshes)} meshes by template registration (template: {tname})",
            "frame": "Procrustes frame of the registered meshes", "units": "mm",
            "registration_assd_mm": [round(r.assd_mm, 4) for r in results]}
    meta.update(metadata or {})
    model = ShapeModel(n_components=n_components, procrustes=procrustes).fit(shapes, template[1], metadata=meta)
    return model, results
