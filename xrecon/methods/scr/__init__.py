"""Patient-specific scene coordinate regression (seed 002).

- :mod:`.unet`: the small U-Net (also used by the landmark baseline);
- :mod:`.network`: :class:`SceneCoordinateNet` (8 channels: entry / exit xyz
  + one log sigma each, normalised bone coordinates);
- :mod:`.loss`: Gaussian NLL on bone pixels, ``1/sigma`` elsewhere;
- :mod:`.data`: adapter from ``xrecon simulate`` datasets to training batches;
- :mod:`.train`: training through :mod:`xrecon.train.loop`;
- :mod:`.model_io`: the model file;
- :mod:`.predict`: correspondences, PnP, refinement; :func:`register_scr`.

User guide: docs/scr.md.
"""
