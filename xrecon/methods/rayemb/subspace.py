"""The landmark subspace of RayEmb (seed 003) and the similarity of a ray to it.

A 3D landmark ``X`` is represented by the subspace spanned by the embeddings of
``N`` rays known to pass through it (the template rays ``F = (e'_1 .. e'_N)``,
one per template image). A query ray with embedding ``e`` is scored by how much
of it lies in that subspace (seed 003)::

    P = F F^+ = U Sigma Sigma^+ U^T          (orthogonal projector onto span F)
    sim(P, e) = e^T P e / |e|^2             (in [0, 1]; 1 = inside the subspace)

:func:`subspace_similarity` computes it without forming ``P``: with ``F`` as
unit rows ``(N, D)``, ``e^T P e = e^T F^T (F F^T)^{-1} F e = |L^{-1} F e|^2``
with ``F F^T = L L^T`` (:func:`subspace_basis`), the Gram matrix regularised by
``eps`` (so rank-deficient sets, and rows switched off by ``valid``, are safe,
and gradients flow). The cost is ``O(M N D)`` for ``M`` query rays, not
``O(M D^2)``; :func:`similarity_maps` scores a whole image against many
landmarks in one matrix product. :func:`projection_matrix`
is the seed's formula, the naive reference the tests compare against.

Why rays through one point span a subspace (the idea the tests pin with an
analytic embedding, :func:`plucker_embedding`): a ray with unit direction ``d``
through the origin ``o`` has Plucker coordinates ``(d, o x d)``; it passes
through ``X`` exactly when ``o x d = X x d``, i.e. ``(d, m) = [I; [X]_x] d``,
a 3-dimensional subspace of R^6. A trained network learns such a map from the
image alone.
"""
from __future__ import annotations

import torch

from xrecon.errors import ShapeError


def projection_matrix(templates: torch.Tensor) -> torch.Tensor:
    """``P = F F^+`` (seed 003) for template embeddings ``templates: (..., N, D)``
    (rows are rays): the ``(..., D, D)`` orthogonal projector onto their span."""
    F = templates.transpose(-1, -2)  # (..., D, N): columns are rays, as in the seed
    return F @ torch.linalg.pinv(F)


def subspace_basis(templates: torch.Tensor, valid: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """Rows ``Q (..., N, D)`` with ``Q^T Q = F^T (F F^T + eps I)^{-1} F`` ~ ``P``.

    ``F`` are the unit-normalised template rays ``templates: (..., N, D)``
    (rows switched off by ``valid: (..., N)`` are zeroed); with ``F F^T + eps I
    = L L^T`` (Cholesky), ``Q = L^{-1} F``, so ``e^T P e = |Q e|^2``: one matrix
    product scores any number of query rays.
    """
    F = torch.nn.functional.normalize(templates, dim=-1)
    if valid is not None:
        if valid.shape != templates.shape[:-1]:
            raise ShapeError("valid", str(tuple(templates.shape[:-1])), tuple(valid.shape))
        F = F * valid[..., None].to(F.dtype)
    n = F.shape[-2]
    gram = F @ F.transpose(-1, -2) + eps * torch.eye(n, dtype=F.dtype, device=F.device)
    chol = torch.linalg.cholesky(gram)  # (..., N, N)
    return torch.linalg.solve_triangular(chol, F, upper=False)


def subspace_similarity(query: torch.Tensor, templates: torch.Tensor, valid: torch.Tensor | None = None,
                        eps: float = 1e-5) -> torch.Tensor:
    """``e^T P e / |e|^2`` of each query ray against each landmark's template subspace.

    Args:
        query: ``(..., M, D)`` query ray embeddings (e.g. every pixel of an image).
        templates: ``(..., N, D)`` template ray embeddings of one landmark per
            leading index (broadcast against ``query``'s leading axes).
        valid: ``(..., N)`` bool, the template rays to use (others are ignored);
            ``None`` uses all.
        eps: Tikhonov regularisation of the Gram matrix (:func:`subspace_basis`;
            rows are unit-normalised, so its diagonal is 1).

    Returns:
        ``(..., M)`` similarities in [0, 1].
    """
    if query.shape[-1] != templates.shape[-1]:
        raise ShapeError("templates", f"(..., N, {query.shape[-1]})", tuple(templates.shape))
    Q = subspace_basis(templates, valid, eps)
    proj = query @ Q.transpose(-1, -2)  # (..., M, N)
    return (proj * proj).sum(-1) / (query * query).sum(-1).clamp_min(1e-12)


def similarity_maps(query: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``(L, M)`` similarities of ``query: (M, D)`` rays (one image's pixels) to
    ``L`` landmarks' subspaces given by :func:`subspace_basis` rows ``basis: (L, N, D)``:
    the same as :func:`subspace_similarity`, as one ``(M, D) x (D, L N)`` product
    (no copy of the image per landmark)."""
    n_l, n, d = basis.shape
    proj = query @ basis.reshape(n_l * n, d).T  # (M, L N)
    sq = (proj * proj).view(len(query), n_l, n).sum(-1)  # (M, L)
    return (sq / (query * query).sum(-1, keepdim=True).clamp_min(1e-12)).T


def plucker_embedding(origins: torch.Tensor, directions: torch.Tensor, length_scale_mm: float = 100.0) -> torch.Tensor:
    """Plucker coordinates ``(d, (o x d) / s)`` ``(..., 6)`` of rays with origins
    ``(..., 3)`` and directions ``(..., 3)`` (normalised here), ``s`` a length scale
    (mm) for conditioning. An exact ray embedding in a fixed world frame: the
    rays through one point span a 3-dimensional subspace of it (module docs).
    It needs the camera pose, so it is an *oracle* for tests, not a method."""
    d = torch.nn.functional.normalize(directions, dim=-1)
    return torch.cat([d, torch.linalg.cross(origins, d) / length_scale_mm], dim=-1)
