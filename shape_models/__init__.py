"""Statistical shape models: build, load, fit to 3D points and to 2D contours.

A library that builds on xrecon's core (``xrecon.errors``, ``xrecon.io``,
``xrecon.geometry``, ``xrecon.metrics``) and on nothing else of xrecon; the
core never imports it (above it, ``xrecon.methods.recon`` and the CLI use
it). It installs with xrecon and cannot be used without it;
``tests/test_layering.py`` holds both directions.
Modules, one concept each:

* :mod:`shape_models.model`: :class:`ShapeModel` (generalised Procrustes + PCA, save/load).
* :mod:`shape_models.procrustes`: Umeyama / generalised Procrustes alignment.
* :mod:`shape_models.bundled`: the articulated-ssm and LLP26 populations, and the
  ready models under ``shape_models/data/``.
* :mod:`shape_models.fit3d`: fit to partial, noisy point clouds in any frame.
* :mod:`shape_models.fit2d`: fit to contours / silhouettes in one or two X-rays.
* :mod:`shape_models.correspond`: bring meshes into correspondence with a template.
* :mod:`shape_models.quality`: compactness, generalisation, specificity.
* :mod:`shape_models.surface`: closest points and occlusion tests on a mesh.
* :mod:`shape_models.synthetic`: seeded synthetic observations of a known shape.
* :mod:`shape_models.populations`: shapes beyond a model's span (smooth deformations,
  the LLP26 subjects in the model's correspondence, mirroring) and their fixed splits.

See docs/shape_models.md.
"""
from shape_models.model import FORMAT_VERSION, ShapeModel

__all__ = ["FORMAT_VERSION", "ShapeModel"]
