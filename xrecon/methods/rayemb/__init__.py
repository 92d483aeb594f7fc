"""RayEmb (seed 003): arbitrary-landmark detection by ray-embedding subspaces, for
patient-wide CT-to-X-ray registration.

``subspace`` (the landmark subspace and the similarity), ``network`` (the
per-pixel encoder), ``loss`` (the contrastive loss), ``landmarks`` (3D points on,
in and around the bone), ``data`` (training items from the reconstruction
datasets, by subject), ``templates`` (template views of a CT, cached),
``register`` (find landmarks, PnP, refinement), ``model_io``, ``train``.
docs/rayemb.md describes the method and its figures.
"""
