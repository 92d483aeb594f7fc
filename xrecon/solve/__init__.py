"""Solvers: every method in xrecon ends in these.

* :mod:`~xrecon.solve.pnp` 2D-3D correspondences -> pose (PnP + RANSAC; the
  only module wrapping OpenCV / poselib),
* :mod:`~xrecon.solve.align3d` 3D point sets -> rigid / similarity transform
  (Umeyama with known correspondence; global init + ICP without),
* :mod:`~xrecon.solve.joint` PnP + 3D alignment + joint refinement (CT to camera),
* :mod:`~xrecon.solve.multiview` several views in one world frame: where rays meet,
  one CT-to-world pose refined over every view,
* :mod:`~xrecon.solve.silhouette` a posed mesh's distance along the viewing ray
  from a bone mask,
* :mod:`~xrecon.solve.similarity` image similarity (NCC, gradient NCC, patch NCC),
* :mod:`~xrecon.solve.refine` intensity-based pose refinement against DRRs.

Every solver returns a small dataclass with the pose, diagnostics, ``success``
and ``reason``; degenerate input gives ``success=False``, never a silent wrong
pose. Poses follow :mod:`xrecon.geometry` (OpenCV ``a_to_b`` 4x4 matrices).
Heavy engines are imported inside the functions that use them.
"""
from xrecon.solve.align3d import AlignConfig, AlignResult, align_surfaces, umeyama
from xrecon.solve.joint import JointConfig, JointResult, solve_joint
from xrecon.solve.pnp import PnPConfig, PnPResult, solve_pnp
from xrecon.solve.silhouette import SilhouetteDepthResult, SilhouettePoseResult, silhouette_depth, silhouette_pose

__all__ = [
    "AlignConfig", "AlignResult", "align_surfaces", "umeyama",
    "JointConfig", "JointResult", "solve_joint",
    "PnPConfig", "PnPResult", "solve_pnp",
    "SilhouetteDepthResult", "SilhouettePoseResult", "silhouette_depth", "silhouette_pose",
]
