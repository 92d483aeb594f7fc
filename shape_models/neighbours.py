"""The bones around the pelvis, in the bundled pelvis model's frame (for film-like phantoms).

A pelvis film shows more than the two hip bones. This module gathers, from the
packages' own data (nothing copied or downloaded), what :mod:`xrecon.anatomy.scene`
needs to put the neighbours around a pelvis instance:

* **femora**: the articulated-ssm coupled models' mean femora (``Fem_L`` of the
  left-side model, ``Fem_R`` of the right-side model), placed as the coupled model
  places them relative to its own pelvis, after a similarity alignment of that
  pelvis (``Pel_L`` + ``Pel_R``, the bundled model's correspondence) onto the
  bundled mean. The **acetabulum** of each side is the set of reference-pelvis
  vertices within 6 mm (above the closest approach) of that femur; the **femoral
  head** the femur vertices within 1.05 radii of a sphere fitted to the femur's
  own closest patch. Measured on the means: the two fitted centres lie 2.0 mm
  (left) / 2.2 mm (right) apart; acetabulum radius 23.4 mm, femoral head 19-20 mm.
* **sacrum**: the LLP26 mean sacrum (musculoskeletal-models 0.2.4, MPL-2.0;
  :func:`shape_models.populations.llp26_pelvis_surface`, closed, genus 0), moved by
  the similarity that aligns the LLP26 mean *hip bones* to the bundled mean pelvis
  (axis permutation of the published frame, then similarity ICP on the closest
  points, 90 % trimmed). LLP26 is another study: the sacrum fits the bundled
  hip bones approximately (ICP residual about 2 mm median), not exactly.
* ``sacrum_top``: the centre of the S1 upper end plate (mean of the sacrum's
  midline vertices within 8 mm of its top), where a lumbar spine would sit.

No source that ships in a reachable package has a lumbar spine next to a pelvis
(the chest CT stops at L3); :mod:`xrecon.anatomy.scene` builds a stand-in.

Frame: the bundled model's (articulated-ssm ISB: +x anterior, +y superior, +z
right, mm). Everything is computed once per process (about 8 s).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from shape_models.procrustes import align_points, apply_transform

#: Closest approach + this (mm) selects the acetabulum / femoral-head patches.
CONTACT_MARGIN_MM = 6.0

#: LLP26's published frame (+x left, +y posterior, +z superior) to ISB (+x anterior, +y superior, +z right).
LLP26_TO_ISB = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])


def fit_sphere(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares sphere through ``points: (N, 3)`` (algebraic fit): ``(centre (3,), radius)``."""
    p = np.asarray(points, np.float64)
    A = np.c_[2.0 * p, np.ones(len(p))]
    x, *_ = np.linalg.lstsq(A, (p**2).sum(1), rcond=None)
    c = x[:3]
    return c, float(np.sqrt(max(x[3] + c @ c, 0.0)))


def _similarity_icp(source: np.ndarray, target: np.ndarray, n_iter: int = 40, keep: float = 90.0) -> np.ndarray:
    """``source_to_target`` 4x4 similarity by ICP on closest points (trimmed to ``keep`` percent)."""
    from scipy.spatial import cKDTree

    tree = cKDTree(target)
    T = np.eye(4)
    T[:3, 3] = target.mean(0) - source.mean(0)
    cur = apply_transform(T, source)
    for _ in range(n_iter):
        d, j = tree.query(cur)
        sel = d <= np.percentile(d, keep)
        step = align_points(cur[sel], target[j[sel]], "similarity")
        cur = apply_transform(step, cur)
        T = step @ T
    return T


@lru_cache(maxsize=2)
def pelvis_neighbours(shape_model: str = "pelvis") -> dict:
    """The neighbours of the bundled ``shape_model`` (only ``"pelvis"``), as plain arrays.

    Returns a dict (the fields of :class:`xrecon.anatomy.scene.SceneParts`):
    ``reference_pelvis (V, 3)`` (the bundled mean), ``acetabulum_ids`` and
    ``femoral_head_ids`` ``{"left"|"right": (n,) int}``, ``femora``
    ``{"left"|"right": (vertices (Vf, 3), faces (Ff, 3))}``, ``sacrum (vertices, faces)``,
    ``sacrum_top (3,)``, ``provenance`` (str); model frame, mm.
    """
    from scipy.spatial import cKDTree

    from shape_models.bundled import load_coupled, load_model
    from shape_models.populations import llp26_pelvis_nodes, llp26_pelvis_surface
    from xrecon.errors import InputError

    if shape_model != "pelvis":
        raise InputError(f"film-like scenes are built around the pelvis model, not {shape_model!r}")
    ref = np.asarray(load_model(shape_model).mean_, np.float64)
    femora, acetabula, heads = {}, {}, {}
    for side in ("left", "right"):
        c = load_coupled(side)
        bone = "Fem_L" if side == "left" else "Fem_R"
        n_pel = c.bone_vertices["Pel_R"][1]
        T = align_points(c.mean[:n_pel], ref, "similarity")
        a, e = c.bone_vertices[bone]
        fa, fe = c.bone_faces[bone]
        fem = apply_transform(T, c.mean[a:e])
        d_pel, _ = cKDTree(fem).query(ref)
        d_fem, _ = cKDTree(ref).query(fem)
        acetabula[side] = np.flatnonzero(d_pel < d_pel.min() + CONTACT_MARGIN_MM)
        cap = np.flatnonzero(d_fem < d_fem.min() + CONTACT_MARGIN_MM)
        centre, radius = fit_sphere(fem[cap])
        heads[side] = np.flatnonzero(np.linalg.norm(fem - centre, axis=1) < 1.05 * radius)
        femora[side] = (fem, c.faces[fa:fe] - a)
    nodes = llp26_pelvis_nodes().mean(0)
    hip_v, _ = llp26_pelvis_surface(nodes, ("right_hip", "left_hip"), subdivisions=4)
    sac_v, sac_f = llp26_pelvis_surface(nodes, ("sacrum",), subdivisions=4)
    T = _similarity_icp(hip_v @ LLP26_TO_ISB.T, ref)
    sac = apply_transform(T, sac_v @ LLP26_TO_ISB.T)
    mid = sac[np.abs(sac[:, 2] - ref[:, 2].mean()) < 12.0]
    top = mid[mid[:, 1] > mid[:, 1].max() - 8.0].mean(0)
    return {"reference_pelvis": ref, "acetabulum_ids": acetabula, "femoral_head_ids": heads, "femora": femora,
            "sacrum": (sac, sac_f), "sacrum_top": top,
            "provenance": "femora: articulated-ssm 0.2.0 coupled means (Fem_L, Fem_R), placed by the coupled model; "
                          "sacrum: LLP26 mean (musculoskeletal-models 0.2.4, MPL-2.0), ICP-aligned via its hip bones"}


__all__ = ["pelvis_neighbours", "fit_sphere", "CONTACT_MARGIN_MM", "LLP26_TO_ISB"]
