"""C-arm simulation: DRRs with exact per-pixel ground truth.

Modules (one concept each; import them directly, nothing heavy is imported here):

- :mod:`xrecon.sim.drr`: :class:`~xrecon.sim.drr.DrrRenderer`, the one adapter
  around DiffDRR (the only module of xrecon that imports it).
- :mod:`xrecon.sim.raycast`: open3d ray casting of a bone mesh (entry / exit
  scene coordinates, depth, mask, visible-surface samples).
- :mod:`xrecon.sim.detector`: detector presets (DeepFluoro geometry, CPU sizes).
- :mod:`xrecon.sim.poses`: seeded C-arm pose samplers (seed 002 protocol, general).
- :mod:`xrecon.sim.groundtruth`: one simulated view with all its ground truth.
- :mod:`xrecon.sim.dataset`: sharded HDF5 datasets (writer, manifest, reader).
- :mod:`xrecon.sim.augment`: domain randomisation applied at load time.

Frames: world = the CT's RAS+ mm frame; poses are OpenCV ``world_to_cam``
(see :mod:`xrecon.geometry` and ``docs/conventions.md``).
"""
