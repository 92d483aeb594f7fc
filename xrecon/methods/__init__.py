"""Methods: each a network, its loss, its training set-up and its predict().

- :mod:`xrecon.methods.scr`: patient-specific scene coordinate regression (seed 002).
- :mod:`xrecon.methods.baselines`: PoseNet and landmark heatmaps + PnP.
"""
