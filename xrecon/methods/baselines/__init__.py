"""Baselines of seed 002, trained patient-specifically on the same data as SCR.

- :mod:`.posenet`: direct pose regression (PoseNet) with a geometric loss.
- :mod:`.landmarks`: fixed-landmark heatmaps + PnP (the seed's DFLNet).
"""
