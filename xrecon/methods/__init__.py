"""Methods: each is a network, its loss, its training config and a predict()
that turns an image into correspondences for the solvers (:mod:`xrecon.solve`).

* :mod:`xrecon.methods.scr` scene coordinate regression, patient-specific (seed 002).
* :mod:`xrecon.methods.recon` patient-wide shape + pose from one X-ray, CT
  registration through the reconstruction (seed 000, phase 2).
* :mod:`xrecon.methods.baselines` PoseNet and landmark-heatmap baselines.
"""
