"""What a real radiograph carries besides the anatomy: collimator strips and lead
side markers, found on the image so that they can be cut off or painted out.

Both are pure functions of an ``(H, W)`` float image (any intensity scale, any
polarity); :func:`xrecon.anatomy.xray_io.read_xray_report` applies them to a
film and keeps its camera consistent with what is cut (pixel conventions:
../shared/CONVENTIONS.md).

**Collimator strips** (:func:`find_collimation`). Where the collimator's blades
stop the beam, the film shows a band of near-constant value along an image side
(bright where unexposed, or black where the system masks it), whose inner edge is
a straight line, parallel to that side or tilted by a few degrees. For each side:
the outermost two lines must be near-constant (their values within ``tol`` of
their median for 80 % of the pixels, ``tol`` = 5 % of the image's robust range,
or four times the lines' own noise when that is larger) and either unexposed
(at least as bright as the image's 99th percentile, less ``tol``: the beam never
reached it) or noise-free (a strip the system painted over, of any value: no
exposed region, not even air, is free of quantum noise); then, on every line
across the side, the strip's width is where the value first departs from that
level by more than ``tol``; a straight line is fitted to those widths by RANSAC
(:func:`skimage.measure.ransac`, :class:`~skimage.measure.LineModelND`,
1.5 px residual). The side has a strip when at least 80 % of the lines agree with
the line, its tilt is at most ``max_angle_deg``, it is at least ``min_width_px``
wide, and its edge is a step (on 60 % of those lines the value 3 px past the
edge is ``2 tol`` from the strip's: a smooth ramp toward a side is not a strip).
Air beside a limb is dark and noisy, so it is not taken for a strip even where
the limb's outline is straight. Anatomy that reaches the side, or air ending on the
body's curved outline, does not give a straight run of constant value and is
left alone (the example pelvis DRR has none: ``tests/anatomy/test_film.py``).

**Lead markers and burned-in text** (:func:`find_markers`). Lead stops the beam
entirely, so a side marker ("L" / "R") is a small plateau at the image's extreme
value with a sharp edge: connected components (:func:`cv2.connectedComponentsWithStats`)
of pixels within 3 % of the brightest value, of 0.01 % to 2 % of the image's area,
within the outer quarter of the image, whose surrounding ring (3 px) is at least
20 % of the range darker. Bone is brightest at smooth peaks, so its ring is not
much darker and it is not taken. :func:`paint_out` fills the markers (dilated by
2 px) from their surroundings (:func:`cv2.inpaint`, Telea, held within the
values around them).

Both expect the image with the extreme value of lead the brightest (bone bright,
as :func:`~xrecon.anatomy.xray_io.read_xray` returns it); strips are found in
either polarity.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

SIDES = ("top", "bottom", "left", "right")


@dataclass(frozen=True)
class CollimatorEdge:
    """A collimator strip along one side of an image.

    Attributes:
        side: ``"top"``, ``"bottom"``, ``"left"`` or ``"right"``.
        width_px: the strip's mean width (pixels, counted from that side).
        max_width_px: its widest point (a tilted edge is wider at one end).
        angle_deg: the inner edge's tilt against the image side (degrees; positive
            when the strip widens toward larger row numbers on the left / right
            side, larger column numbers on the top / bottom side).
        level: the strip's value (in the intensities it was found on).
    """

    side: str
    width_px: float
    max_width_px: float
    angle_deg: float
    level: float

    def to_dict(self) -> dict:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Marker:
    """A lead marker or burned-in text: ``box`` = ``(row0, col0, row1, col1)``
    (first row / column, one past the last), ``area_px`` its pixel count."""

    box: tuple[int, int, int, int]
    area_px: int

    def to_dict(self) -> dict:
        return {"box_row0_col0_row1_col1": [int(b) for b in self.box], "area_px": int(self.area_px)}


def _robust_range(image: np.ndarray) -> float:
    lo, hi = np.percentile(image, [0.5, 99.5])
    return float(hi - lo) if hi > lo else float(image.max() - image.min())


def _oriented(image: np.ndarray, side: str) -> np.ndarray:
    """``image`` turned so that ``side`` is column 0 (lines across the side are rows)."""
    return {"left": image, "right": image[:, ::-1], "top": image.T, "bottom": image[::-1, :].T}[side]


def find_collimation(image: np.ndarray, *, min_width_px: float = 2.0, max_fraction: float = 0.35,
                     max_angle_deg: float = 5.0, seed: int = 0) -> list[CollimatorEdge]:
    """Collimator strips along the sides of ``image: (H, W)`` (see the module docstring).

    Args:
        image: the X-ray, any intensity scale.
        min_width_px: narrower strips are not reported.
        max_fraction: a strip is looked for in at most this share of the image's
            extent from each side.
        max_angle_deg: largest tilt of a strip's inner edge.
        seed: RANSAC's random generator.

    Returns:
        one :class:`CollimatorEdge` per side that has a strip (none: an empty list).
    """
    import cv2
    from skimage.measure import LineModelND, ransac

    img = np.asarray(image, np.float32)
    scale = _robust_range(img)
    if not scale > 0:
        return []
    smooth = cv2.medianBlur(img, 3)
    top = float(np.percentile(smooth, 99))
    edges = []
    for side in SIDES:
        a = _oriented(smooth, side)
        n, m = a.shape
        depth = max(int(max_fraction * m), 3)
        outer = a[:, :2]
        level = float(np.median(outer))
        noise = 1.4826 * float(np.median(np.abs(outer - level)))
        tol = max(0.05 * scale, 4.0 * noise)
        if (np.abs(outer - level) <= tol).mean() < 0.8:
            continue
        if not (level >= top - tol or noise <= 1e-6 * scale):
            continue  # neither unexposed (bright) nor a noise-free mask: air beside the body
        off = np.abs(a[:, :depth] - level) > tol
        width = np.where(off.any(1), off.argmax(1), depth).astype(np.float64)
        rows = np.arange(n, dtype=np.float64)
        usable = width < depth
        if usable.sum() < 0.8 * n:
            continue
        pts = np.column_stack([rows[usable], width[usable]])
        model, inliers = ransac(pts, LineModelND, min_samples=2, residual_threshold=1.5, max_trials=200,
                                rng=seed)
        if model is None or inliers is None or inliers.sum() < 0.8 * n:
            continue
        # a step, not a slope: within 3 px past the edge the value is 2 tol from the strip's
        j = np.minimum(pts[inliers, 1].astype(int) + 3, m - 1)
        step = np.abs(a[pts[inliers, 0].astype(int), j] - level) >= 2 * tol
        if step.mean() < 0.6:
            continue
        origin, direction = model.origin, model.direction
        if abs(direction[0]) < 1e-9:
            continue
        slope = direction[1] / direction[0]  # width change per line
        angle = float(np.degrees(np.arctan(slope)))
        at = origin[1] + slope * (np.array([0.0, n - 1.0]) - origin[0])
        mean_w = float(at.mean())
        if abs(angle) > max_angle_deg or mean_w < min_width_px:
            continue
        edges.append(CollimatorEdge(side, mean_w, float(at.max()), angle, level))
    return edges


def collimation_crop(edges: list[CollimatorEdge], margin_px: int = 1) -> tuple[int, int, int, int]:
    """Pixels to cut ``(top, bottom, left, right)`` so that no strip of ``edges``
    remains: each strip's widest point, rounded up, plus ``margin_px`` (the
    penumbra). A tilted strip loses the sliver of anatomy beside its narrow end."""
    cut = dict.fromkeys(SIDES, 0)
    for e in edges:
        cut[e.side] = int(np.ceil(e.max_width_px - 1e-6)) + int(margin_px)
    return cut["top"], cut["bottom"], cut["left"], cut["right"]


def find_markers(image: np.ndarray, *, saturation: float = 0.03, border_fraction: float = 0.25,
                 min_area_fraction: float = 1e-4, max_area_fraction: float = 0.02,
                 min_contrast: float = 0.2) -> list[Marker]:
    """Lead side markers and burned-in text on ``image: (H, W)`` (bright = dense;
    see the module docstring for the criteria).

    Args:
        saturation: pixels within this share of the range from the brightest value
            are candidate lead.
        border_fraction: a marker lies within this share of the image from a side.
        min_area_fraction, max_area_fraction: a marker's size, as a share of the image's area
            (at least 4 pixels).
        min_contrast: how much darker (share of the range) its 3 px ring must be.

    Returns:
        the markers found, largest first.
    """
    import cv2

    img = np.asarray(image, np.float32)
    H, W = img.shape
    lo, hi = float(np.percentile(img, 0.5)), float(img.max())
    if not hi > lo:
        return []
    norm = (img - lo) / (hi - lo)
    sat = (norm >= 1.0 - saturation).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(sat, connectivity=8)
    min_area = max(4, int(min_area_fraction * H * W))
    max_area = max_area_fraction * H * W
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    found = []
    for i in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[i])
        if not min_area <= area <= max_area:
            continue
        near = (y < border_fraction * H or y + h > (1 - border_fraction) * H
                or x < border_fraction * W or x + w > (1 - border_fraction) * W)
        if not near:
            continue
        y0, y1, x0, x1 = max(y - 4, 0), min(y + h + 4, H), max(x - 4, 0), min(x + w + 4, W)
        comp = (labels[y0:y1, x0:x1] == i).astype(np.uint8)
        ring = (cv2.dilate(comp, kernel) > 0) & (comp == 0) & (sat[y0:y1, x0:x1] == 0)
        if not ring.any() or float(np.median(norm[y0:y1, x0:x1][ring])) > 1.0 - min_contrast:
            continue
        found.append(Marker((y, x, y + h, x + w), area))
    return sorted(found, key=lambda mk: -mk.area_px)


def paint_out(image: np.ndarray, markers: list[Marker], *, grow_px: int = 2) -> np.ndarray:
    """``image: (H, W)`` with each marker's box (grown by ``grow_px``) filled from
    the surroundings (:func:`cv2.inpaint`, Telea), within the range of the values
    in a 3 px ring around it.
    Returns a float64 copy; the input is not changed."""
    import cv2

    img = np.asarray(image, np.float64)
    if not markers:
        return img.copy()
    lo, hi = float(img.min()), float(img.max())
    span = hi - lo if hi > lo else 1.0
    norm = ((img - lo) / span).astype(np.float32)
    mask = np.zeros(img.shape, np.uint8)
    for mk in markers:
        r0, c0, r1, c1 = mk.box
        mask[r0:r1, c0:c1] = 1
    if grow_px > 0:
        k = 2 * int(grow_px) + 1
        mask = cv2.dilate(mask, np.ones((k, k), np.uint8))
    filled = cv2.inpaint(norm, mask, 3, cv2.INPAINT_TELEA).astype(np.float64)
    # Telea extrapolates gradients and can overshoot: keep the fill within its surroundings' values
    ring = (cv2.dilate(mask, np.ones((7, 7), np.uint8)) > 0) & (mask == 0)
    if ring.any():
        inside = mask > 0
        filled[inside] = np.clip(filled[inside], norm[ring].min(), norm[ring].max())
    return filled * span + lo
