"""The one camera: OpenCV pinhole, world-to-camera. See :mod:`xrecon.geometry`.

A C-arm is a pinhole camera whose centre is the X-ray source and whose image
plane is the detector at distance ``sdd_mm``. ``Camera`` holds one or a batch of
views (``world_to_cam: (B, 4, 4)``, ``K: (B, 3, 3)``) of the same image size.

Camera JSON files (``Camera.save``, ``--camera``, the ``<image>.json`` sidecar
of :func:`xrecon.anatomy.xray_io.read_xray`) have one schema, checked field by
field at the boundary by :func:`parse_camera_json`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from xrecon.errors import InputError, check_shape
from xrecon.geometry import se3

#: Largest deviation of ``R^T R`` from the identity (and of ``det R`` from 1)
#: accepted in a camera JSON's ``world_to_cam``. A rotation written with 6
#: decimals deviates by up to about 3e-6; a matrix further off is not a rotation.
ROTATION_TOLERANCE = 1e-5


def size_within(height: int, width: int, max_side: int) -> tuple[int, int]:
    """``(height, width)`` shrunk, aspect kept, so that the longest side is at most
    ``max_side`` (unchanged when it already is)."""
    height, width, max_side = int(height), int(width), int(max_side)
    if max_side < 1:
        raise InputError(f"max_side must be a positive number of pixels, got {max_side}")
    longest = max(height, width)
    if longest <= max_side:
        return height, width
    s = max_side / longest
    return max(1, min(max_side, round(height * s))), max(1, min(max_side, round(width * s)))


def intrinsics_from_detector(
    sdd_mm: float,
    pixel_spacing_mm: float | tuple[float, float],
    height: int,
    width: int,
    principal_offset_mm: tuple[float, float] = (0.0, 0.0),
) -> torch.Tensor:
    """Intrinsic matrix ``(3, 3)`` of a flat detector.

    ``pixel_spacing_mm`` is ``dx`` (columns) or ``(dx, dy)``. The principal point
    is the image centre ``((W-1)/2, (H-1)/2)`` in pixel-centre coordinates, shifted
    by ``principal_offset_mm`` (x0, y0) on the detector.
    """
    dx, dy = (pixel_spacing_mm, pixel_spacing_mm) if np.isscalar(pixel_spacing_mm) else pixel_spacing_mm
    x0, y0 = principal_offset_mm
    return torch.tensor(
        [
            [sdd_mm / dx, 0.0, width / 2 - 0.5 + x0 / dx],
            [0.0, sdd_mm / dy, height / 2 - 0.5 + y0 / dy],
            [0.0, 0.0, 1.0],
        ],
        dtype=torch.float64,
    )


@dataclass
class Camera:
    """A batch of X-ray views sharing one image size.

    Attributes:
        K: ``(B, 3, 3)`` intrinsics in pixels.
        world_to_cam: ``(B, 4, 4)`` rigid pose, ``x_cam = R x_world + t``.
        height, width: image size in pixels (rows, columns).
        pixel_spacing_mm: ``(dx, dy)`` detector spacing, used to convert pixel
            distances on the detector to mm (projected mTRE).
    """

    K: torch.Tensor
    world_to_cam: torch.Tensor
    height: int
    width: int
    pixel_spacing_mm: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self):
        self.K = torch.as_tensor(self.K, dtype=torch.float64)
        self.world_to_cam = torch.as_tensor(self.world_to_cam, dtype=torch.float64)
        if self.K.ndim == 2:
            self.K = self.K[None]
        if self.world_to_cam.ndim == 2:
            self.world_to_cam = self.world_to_cam[None]
        check_shape("K", self.K, (None, 3, 3))
        check_shape("world_to_cam", self.world_to_cam, (None, 4, 4))
        if self.K.shape[0] != self.world_to_cam.shape[0]:
            if self.K.shape[0] == 1:
                self.K = self.K.expand(self.world_to_cam.shape[0], 3, 3).clone()
            elif self.world_to_cam.shape[0] == 1:
                self.world_to_cam = self.world_to_cam.expand(self.K.shape[0], 4, 4).clone()
            else:
                raise InputError(f"K has batch {self.K.shape[0]} but world_to_cam has {self.world_to_cam.shape[0]}")
        self.height, self.width = int(self.height), int(self.width)
        dx, dy = (self.pixel_spacing_mm, self.pixel_spacing_mm) if np.isscalar(self.pixel_spacing_mm) else self.pixel_spacing_mm
        self.pixel_spacing_mm = (float(dx), float(dy))

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_detector(
        cls,
        sdd_mm: float,
        pixel_spacing_mm: float | tuple[float, float],
        height: int,
        width: int,
        world_to_cam: torch.Tensor | None = None,
        principal_offset_mm: tuple[float, float] = (0.0, 0.0),
    ) -> "Camera":
        """Camera of a flat detector; ``world_to_cam`` defaults to the identity."""
        K = intrinsics_from_detector(sdd_mm, pixel_spacing_mm, height, width, principal_offset_mm)
        if world_to_cam is None:
            world_to_cam = torch.eye(4, dtype=torch.float64)
        sp = (pixel_spacing_mm, pixel_spacing_mm) if np.isscalar(pixel_spacing_mm) else tuple(pixel_spacing_mm)
        return cls(K, world_to_cam, height, width, sp)

    def __len__(self) -> int:
        return self.world_to_cam.shape[0]

    def __getitem__(self, i) -> "Camera":
        idx = [i] if isinstance(i, int) else i
        return Camera(self.K[idx], self.world_to_cam[idx], self.height, self.width, self.pixel_spacing_mm)

    def with_pose(self, world_to_cam: torch.Tensor) -> "Camera":
        """Same intrinsics, new pose(s)."""
        return Camera(self.K, world_to_cam, self.height, self.width, self.pixel_spacing_mm)

    @property
    def sdd_mm(self) -> torch.Tensor:
        """Source-to-detector distance ``(B,)`` (focal length times pixel spacing)."""
        return self.K[:, 0, 0] * self.pixel_spacing_mm[0]

    @property
    def source_world(self) -> torch.Tensor:
        """X-ray source (camera centre) in world coordinates, ``(B, 3)``."""
        return se3.invert(self.world_to_cam)[:, :3, 3]

    def resized(self, height: int, width: int) -> "Camera":
        """The same detector sampled on a ``height x width`` grid (K scaled to match)."""
        sx, sy = width / self.width, height / self.height
        K = self.K.clone()
        K[:, 0, 0] *= sx
        K[:, 1, 1] *= sy
        K[:, 0, 2] = (K[:, 0, 2] + 0.5) * sx - 0.5
        K[:, 1, 2] = (K[:, 1, 2] + 0.5) * sy - 0.5
        sp = (self.pixel_spacing_mm[0] / sx, self.pixel_spacing_mm[1] / sy)
        return Camera(K, self.world_to_cam, height, width, sp)

    def resized_within(self, max_side: int) -> "Camera":
        """:meth:`resized` to :func:`size_within` ``max_side`` (itself when already within)."""
        h, w = size_within(self.height, self.width, max_side)
        return self if (h, w) == (self.height, self.width) else self.resized(h, w)

    def cropped(self, top: int, left: int, height: int, width: int) -> "Camera":
        """Camera of the sub-image ``img[top:top+height, left:left+width]``."""
        K = self.K.clone()
        K[:, 0, 2] -= left
        K[:, 1, 2] -= top
        return Camera(K, self.world_to_cam, height, width, self.pixel_spacing_mm)

    # ------------------------------------------------------------------ projection
    def world_to_camera(self, points_world: torch.Tensor) -> torch.Tensor:
        """``points_world: (B, N, 3)`` or ``(N, 3)`` -> camera-frame points ``(B, N, 3)``."""
        points_world = torch.as_tensor(points_world, dtype=torch.float64)
        if points_world.ndim == 2:
            points_world = points_world[None]
        return se3.apply(self.world_to_cam, points_world)

    def project(self, points_world: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project ``points_world: (B, N, 3)`` (or ``(N, 3)``) to pixels.

        Returns ``uv: (B, N, 2)`` (column, row) and ``depth: (B, N)`` (camera z, mm).
        """
        pc = self.world_to_camera(points_world)
        return self.project_camera(pc)

    def project_camera(self, points_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project camera-frame points ``(B, N, 3)`` to ``uv (B, N, 2)`` and depth ``(B, N)``."""
        points_cam = torch.as_tensor(points_cam, dtype=self.K.dtype)
        if points_cam.ndim == 2:
            points_cam = points_cam[None]
        z = points_cam[..., 2]
        h = points_cam @ self.K.transpose(-1, -2)
        uv = h[..., :2] / h[..., 2:3]
        return uv, z

    def rays_camera(self, uv: torch.Tensor) -> torch.Tensor:
        """Back-project pixels ``uv: (B, N, 2)`` to ray directions ``(B, N, 3)`` in the
        camera frame, scaled so that ``z = 1`` (``K^-1 [u, v, 1]``)."""
        uv = torch.as_tensor(uv, dtype=self.K.dtype)
        if uv.ndim == 2:
            uv = uv[None].expand(len(self), -1, -1)
        ones = torch.ones_like(uv[..., :1])
        return torch.cat([uv, ones], dim=-1) @ torch.linalg.inv(self.K).transpose(-1, -2)

    def unproject(self, uv: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
        """World points ``(B, N, 3)`` at camera depth ``depth: (B, N)`` along the rays of ``uv``:
        ``X = R^T (d K^-1 [u, v, 1] - t)`` (seed 002, eq. 2)."""
        rays = self.rays_camera(uv)
        pc = rays * torch.as_tensor(depth, dtype=rays.dtype)[..., None]
        return se3.apply(se3.invert(self.world_to_cam), pc)

    def rays_world(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rays of pixels ``uv: (B, N, 2)`` in the world frame: origins ``(B, N, 3)``
        (the source) and unit directions ``(B, N, 3)``."""
        d_cam = self.rays_camera(uv)
        d_cam = d_cam / d_cam.norm(dim=-1, keepdim=True)
        R = self.world_to_cam[:, :3, :3]
        d_world = d_cam @ R  # R^T d for row vectors
        origin = self.source_world[:, None, :].expand_as(d_world)
        return origin, d_world

    def pixel_grid(self) -> torch.Tensor:
        """All pixel centres ``(H*W, 2)`` as (u, v), row-major (``v * W + u``)."""
        v, u = torch.meshgrid(
            torch.arange(self.height, dtype=torch.float64), torch.arange(self.width, dtype=torch.float64), indexing="ij"
        )
        return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)

    # ------------------------------------------------------------------ I/O
    def to_dict(self, i: int = 0, frame: str = "world (RAS+, mm)") -> dict:
        """JSON-ready description of view ``i`` (names its frames)."""
        return {
            "convention": "OpenCV pinhole, x_cam = R x_world + t; u=column, v=row, pixel centres at integers",
            "world_frame": frame,
            "height": self.height,
            "width": self.width,
            "pixel_spacing_mm": list(self.pixel_spacing_mm),
            "sdd_mm": float(self.sdd_mm[i]),
            "K": self.K[i].tolist(),
            "world_to_cam": self.world_to_cam[i].tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict, source: str | Path | None = None) -> "Camera":
        """Inverse of :meth:`to_dict`: a camera JSON object (schema of
        :func:`parse_camera_json`) with ``height``, ``width`` and either ``K`` or
        ``sdd_mm`` (+ ``pixel_spacing_mm``, default 1, and ``principal_offset_mm``);
        ``K`` wins when both are given. Errors name ``source`` and the field."""
        f = parse_camera_json(d, source)
        if f["height"] is None:
            raise InputError("camera JSON needs 'height' and 'width' (the image size in pixels)", source)
        if f["K"] is None and f["sdd_mm"] is None:
            raise InputError("camera JSON needs 'K' (3x3 intrinsics in pixels) or 'sdd_mm' "
                             "(source-to-detector distance) with 'pixel_spacing_mm'", source)
        h, w = f["height"], f["width"]
        sp = f["pixel_spacing_mm"] or (1.0, 1.0)
        if f["K"] is not None:
            K = torch.as_tensor(f["K"])
        else:
            K = intrinsics_from_detector(f["sdd_mm"], sp, h, w, f["principal_offset_mm"] or (0.0, 0.0))
        pose = f["world_to_cam"] if f["world_to_cam"] is not None else (
            f["carm"].world_to_cam() if f["carm"] is not None else np.eye(4))
        return cls(K, torch.as_tensor(pose), h, w, sp)

    def save(self, path: str | Path, i: int = 0) -> None:
        from xrecon.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(i), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "Camera":
        """A camera JSON file (see :meth:`from_dict`); errors name ``path``."""
        path = Path(path)
        return cls.from_dict(read_camera_json(path), path)


# ---------------------------------------------------------------------- the camera JSON schema
def read_camera_json(path: str | Path) -> dict:
    """The JSON object in a camera / geometry file (not yet checked: see
    :func:`parse_camera_json`). Raises :class:`InputError` naming ``path``."""
    path = Path(path)
    try:
        d = json.loads(path.read_text())
    except OSError as exc:
        raise InputError(f"cannot read the camera JSON ({exc.strerror or exc})", path) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        why = f"{exc.msg}, line {exc.lineno}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise InputError(f"camera JSON is not valid JSON ({why})", path) from exc
    if not isinstance(d, dict):
        raise InputError(f"camera JSON must be an object ({{...}}), got a {type(d).__name__}", path)
    return d


def parse_camera_json(d, source: str | Path | None = None) -> dict:
    """Check every geometry field of a camera JSON object and return them normalised.

    The one schema of camera files (``Camera.save``, ``--camera``) and image
    sidecars (``<image>.json``). Every field is optional here (callers say which
    they need); ``null`` counts as absent; other keys are ignored.

    ============================  =================================================
    ``height``, ``width``         positive whole numbers (pixels), both or neither
    ``K``                         3x3 finite numbers, ``[[fx, s, cx], [0, fy, cy],
                                  [0, 0, 1]]`` with ``fx, fy > 0`` (pixels)
    ``world_to_cam``              4x4 finite rigid transform: ``R^T R = I`` and
                                  ``det R = 1`` to :data:`ROTATION_TOLERANCE`, last
                                  row ``0 0 0 1`` (see :mod:`xrecon.geometry`)
    ``sdd_mm``                    positive finite number
    ``pixel_spacing_mm``          positive finite ``dx`` or ``[dx, dy]`` (columns, rows)
    ``principal_offset_mm``       two finite numbers ``[x0, y0]``
    ``primary_angle_deg``,        a C-arm view's pose about its isocentre
    ``secondary_angle_deg``,      (:mod:`xrecon.geometry.carm`): all three or none;
    ``source_to_isocentre_mm``    finite angles in [-180, 180] / [-90, 90] (deg),
                                  a distance > 0 and below ``sdd_mm`` (mm); not
                                  together with ``world_to_cam`` (one pose per file)
    ============================  =================================================

    Returns a dict with those keys: ``height``/``width`` int, ``K`` ``(3, 3)`` and
    ``world_to_cam`` ``(4, 4)`` float64 arrays, ``sdd_mm`` float,
    ``pixel_spacing_mm`` and ``principal_offset_mm`` float pairs, ``carm`` a
    :class:`~xrecon.geometry.carm.CArmAngles`; ``None`` where absent.

    Raises:
        InputError: naming ``source`` (the JSON file), the field, what it must
            be and what it is.
    """
    if not isinstance(d, dict):
        raise InputError(f"camera JSON must be an object ({{...}}), got a {type(d).__name__}", source)

    def bad(field: str, problem: str):
        return InputError(f"camera JSON field '{field}' {problem}", source)

    out: dict = {k: None for k in ("height", "width", "K", "world_to_cam", "sdd_mm", "pixel_spacing_mm",
                                   "principal_offset_mm", "carm")}
    for field in ("height", "width"):
        v = d.get(field)
        if v is None:
            continue
        if not _is_number(v) or not float(v).is_integer() or v < 1:
            raise bad(field, f"must be a positive whole number of pixels, got {v!r}")
        out[field] = int(v)
    if (out["height"] is None) != (out["width"] is None):
        missing = "width" if out["width"] is None else "height"
        raise bad(missing, "is missing: give both 'height' and 'width' or neither")

    v = d.get("sdd_mm")
    if v is not None:
        if not _is_number(v) or not np.isfinite(v) or v <= 0:
            raise bad("sdd_mm", f"must be a positive number (mm), got {v!r}")
        out["sdd_mm"] = float(v)

    v = d.get("pixel_spacing_mm")
    if v is not None:
        arr = _numbers(v)
        if arr is None or arr.shape not in ((), (1,), (2,)):
            raise bad("pixel_spacing_mm", f"must be one number dx or two [dx, dy] (mm), got {v!r}")
        if not np.isfinite(arr).all() or (arr <= 0).any():
            raise bad("pixel_spacing_mm", f"must be positive and finite (mm), got {v!r}")
        arr = np.repeat(arr.reshape(-1), 2) if arr.size == 1 else arr
        out["pixel_spacing_mm"] = (float(arr[0]), float(arr[1]))

    v = d.get("principal_offset_mm")
    if v is not None:
        arr = _numbers(v)
        if arr is None or arr.shape != (2,) or not np.isfinite(arr).all():
            raise bad("principal_offset_mm", f"must be two finite numbers [x0, y0] (mm), got {v!r}")
        out["principal_offset_mm"] = (float(arr[0]), float(arr[1]))

    v = d.get("K")
    if v is not None:
        K = _numbers(v)
        if K is None or K.shape != (3, 3):
            raise bad("K", f"must be a 3x3 array of numbers, got {_describe(v, K)}")
        if not np.isfinite(K).all():
            raise bad("K", "holds NaN or infinite values")
        if K[0, 0] <= 0 or K[1, 1] <= 0:
            raise bad("K", f"must have positive focal lengths K[0][0], K[1][1] (pixels), got {K[0, 0]:g}, {K[1, 1]:g}")
        if np.abs(K[[1, 2, 2, 2], [0, 0, 1, 2]] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-9:
            raise bad("K", f"must be [[fx, s, cx], [0, fy, cy], [0, 0, 1]], got rows 2-3 {K[1:].tolist()}")
        out["K"] = K

    v = d.get("world_to_cam")
    if v is not None:
        T = _numbers(v)
        if T is None or T.shape != (4, 4):
            raise bad("world_to_cam", f"must be a 4x4 array of numbers, got {_describe(v, T)}")
        if not np.isfinite(T).all():
            raise bad("world_to_cam", "holds NaN or infinite values")
        if np.abs(T[3] - [0.0, 0.0, 0.0, 1.0]).max() > 1e-9:
            raise bad("world_to_cam", f"must end with the row [0, 0, 0, 1], got {T[3].tolist()}")
        R = T[:3, :3]
        ortho = float(np.abs(R.T @ R - np.eye(3)).max())
        det = float(np.linalg.det(R))
        if ortho > ROTATION_TOLERANCE or abs(det - 1.0) > ROTATION_TOLERANCE:
            raise bad("world_to_cam", f"is not rigid: its 3x3 block must be a rotation (R^T R = I, det R = +1), "
                                      f"got max |R^T R - I| = {ortho:.2g}, det R = {det:.6g} "
                                      f"(tolerance {ROTATION_TOLERANCE:g}; write it with at least 6 decimals)")
        out["world_to_cam"] = T

    given = [k for k in CARM_FIELDS if d.get(k) is not None]
    if given:
        from xrecon.geometry.carm import CArmAngles

        if len(given) < len(CARM_FIELDS):
            missing = [k for k in CARM_FIELDS if k not in given]
            raise bad(missing[0], f"is missing: a C-arm pose needs all of {', '.join(CARM_FIELDS)} (gives "
                                  f"{', '.join(given)})")
        for k in CARM_FIELDS:
            if not _is_number(d[k]):
                raise bad(k, f"must be a number, got {d[k]!r}")
        if out["world_to_cam"] is not None:
            raise bad("world_to_cam", "and C-arm angles (primary_angle_deg, ...) are both given: give one pose, "
                                      "world_to_cam (any shared frame) or the angles (the isocentre frame)")
        try:
            out["carm"] = CArmAngles(*(float(d[k]) for k in CARM_FIELDS))
        except InputError as exc:
            raise InputError(f"camera JSON: {exc.problem}", source) from None
        if out["sdd_mm"] is not None and out["carm"].source_to_isocentre_mm >= out["sdd_mm"]:
            raise bad("source_to_isocentre_mm", f"({out['carm'].source_to_isocentre_mm:g} mm) must be below "
                                                f"sdd_mm ({out['sdd_mm']:g} mm): the isocentre lies between the "
                                                "source and the detector")
    return out


#: the camera JSON fields of a C-arm pose (:mod:`xrecon.geometry.carm`)
CARM_FIELDS = ("primary_angle_deg", "secondary_angle_deg", "source_to_isocentre_mm")


def _is_number(v) -> bool:
    """A JSON number (``bool`` is not one)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _numbers(v) -> np.ndarray | None:
    """``v`` (a number or nested lists of numbers) as a float64 array, or ``None``
    when it holds anything else (strings, booleans, objects) or is ragged."""
    def ok(x) -> bool:
        return _is_number(x) or (isinstance(x, (list, tuple)) and all(ok(y) for y in x))

    if not ok(v):
        return None
    try:
        return np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):  # ragged nesting
        return None


def _describe(v, arr: np.ndarray | None) -> str:
    if arr is not None:
        return f"shape {arr.shape}"
    if isinstance(v, (list, tuple)):
        return f"a list that is ragged or holds non-numbers: {v!r}"[:200]
    return f"{type(v).__name__} {v!r}"[:200]
