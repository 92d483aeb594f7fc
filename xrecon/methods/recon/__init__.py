"""Patient-wide reconstruction and registration (seed 000, phase 2).

One X-ray in; the bone's shape (a statistical shape model instance) and its
pose in the camera out; with a CT, the CT-to-camera pose. See
``docs/reconstruction.md`` and :mod:`xrecon.methods.recon.pipeline`.

Modules: ``shape`` (shape space, canonical coordinates), ``targets`` (ground
truth of a simulated view), ``data`` (training set generation and reader),
``network``, ``loss``, ``predict`` (network read-out), ``fit`` (SSM-regularised
pose + shape fit), ``pipeline`` (reconstruct, register), ``multiview`` (several
views whose cameras share one world frame: one shape, one pose, one CT pose),
``outputs`` / ``outputs_multiview`` (the commands' files), ``model_io``,
``train`` (training entry point).
"""
