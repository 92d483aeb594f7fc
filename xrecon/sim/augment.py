"""Domain randomisation for simulated X-rays, applied at load time (seed 002:
random inversion, colour jitter, random erasing; plus gamma, noise, blur and,
off by default, collimation: :class:`RandomCollimation`).

Images are first scaled to [0, 1] per image (:func:`normalise_image`); the
augmentations are kornia's, so they draw from torch's global generator (a
``DataLoader`` seeds it per worker from the training seed). They never change
the geometry, so the per-pixel ground truth stays valid (random erasing hides image
content only; the targets keep their values).

The one geometric augmentation, :class:`ZoomAugment`, changes the camera
instead: a zoom about the principal point is a longer focal length at the same
pose, so the per-pixel ground truth stays exact when resampled with the image.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
from torch.utils.data import Dataset

from xrecon.errors import InputError


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities and ranges of each augmentation (0 disables one).

    Attributes:
        p_invert: probability of ``x -> 1 - x`` (bone dark instead of bright).
        p_contrast, contrast: probability and factor range of a contrast change.
        p_brightness, brightness: probability and additive range of a brightness change.
        p_gamma, gamma: probability and exponent range.
        p_noise, noise_std: probability and std of additive Gaussian noise.
        p_blur, blur_sigma: probability and sigma range (px) of a Gaussian blur.
        p_erase, erase_scale: probability and area fraction range of random erasing.
        p_collimate: probability of collimator shutters (:class:`RandomCollimation`;
            0, the default, leaves the pipeline and its random draws as they were).
        collimate_fraction: range of the fraction of the image side each rectangular
            shutter covers (drawn per side).
        p_circular: probability that the field is circular (an image intensifier)
            instead of rectangular.
        collimate_rotation_deg: largest rotation of the rectangular field.
    """

    p_invert: float = 0.5
    p_contrast: float = 0.8
    contrast: tuple[float, float] = (0.6, 1.4)
    p_brightness: float = 0.8
    brightness: tuple[float, float] = (-0.2, 0.2)
    p_gamma: float = 0.5
    gamma: tuple[float, float] = (0.7, 1.5)
    p_noise: float = 0.5
    noise_std: float = 0.03
    p_blur: float = 0.3
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    p_erase: float = 0.5
    erase_scale: tuple[float, float] = (0.02, 0.15)
    p_collimate: float = 0.0
    collimate_fraction: tuple[float, float] = (0.0, 0.2)
    p_circular: float = 0.3
    collimate_rotation_deg: float = 10.0

    def to_dict(self) -> dict:
        return asdict(self)


#: Seed 002's augmentation (inversion, colour jitter, random erasing) with the
#: extra gamma / noise / blur of the issue.
DEFAULT_AUGMENT = AugmentConfig()

#: :data:`DEFAULT_AUGMENT` plus collimation of half the images (for film-like data).
FILM_AUGMENT = replace(DEFAULT_AUGMENT, p_collimate=0.5)

#: Nothing changes (for validation and test sets).
NO_AUGMENT = AugmentConfig(0.0, 0.0, (1.0, 1.0), 0.0, (0.0, 0.0), 0.0, (1.0, 1.0), 0.0, 0.0, 0.0, (0.1, 0.1), 0.0, (0.02, 0.02))


def normalise_image(image: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Scale each image of ``image: (B, C, H, W)`` to [0, 1] by its own min and max."""
    lo = image.amin(dim=(-1, -2, -3), keepdim=True)
    hi = image.amax(dim=(-1, -2, -3), keepdim=True)
    return (image - lo) / (hi - lo).clamp(min=eps)


class Augmenter(torch.nn.Module):
    """``forward(image: (B, 1, H, W) in [0, 1]) -> (B, 1, H, W)`` randomised, clipped to [0, 1]."""

    def __init__(self, config: AugmentConfig = DEFAULT_AUGMENT):
        super().__init__()
        import kornia.augmentation as KA

        self.config = c = config
        steps = []
        if c.p_invert > 0:
            steps.append(KA.RandomInvert(p=c.p_invert))
        if c.p_contrast > 0:
            steps.append(KA.RandomContrast(contrast=c.contrast, clip_output=True, p=c.p_contrast))
        if c.p_brightness > 0:
            steps.append(KA.RandomBrightness(brightness=(1.0 + c.brightness[0], 1.0 + c.brightness[1]), clip_output=True, p=c.p_brightness))
        if c.p_gamma > 0:
            steps.append(KA.RandomGamma(gamma=c.gamma, p=c.p_gamma))
        if c.p_blur > 0:
            steps.append(KA.RandomGaussianBlur(kernel_size=(5, 5), sigma=c.blur_sigma, p=c.p_blur))
        if c.p_noise > 0:
            steps.append(KA.RandomGaussianNoise(mean=0.0, std=c.noise_std, p=c.p_noise))
        if c.p_erase > 0:
            steps.append(KA.RandomErasing(scale=c.erase_scale, ratio=(0.3, 3.3), value=0.0, p=c.p_erase))
        if c.p_collimate > 0:
            steps.append(RandomCollimation(c.p_collimate, c.collimate_fraction, c.p_circular, c.collimate_rotation_deg))
        self.steps = torch.nn.Sequential(*steps)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if len(self.steps) == 0:
            return image
        return self.steps(image).clamp(0.0, 1.0)


class RandomCollimation(torch.nn.Module):
    """Collimator shutters: the image outside a random field is set to 0 (black).

    ``forward(image: (B, C, H, W)) -> (B, C, H, W)``; each image is collimated with
    probability ``p``. A rectangular field loses a fraction of the side drawn in
    ``fraction`` on each of its four sides and is turned by up to ``rotation_deg``
    about the image centre; a circular field (probability ``p_circular``) is centred
    within 5 % of the image centre with a radius of 0.8-1.1 times half the shorter
    side (so the corners go black). The edge is anti-aliased over one pixel. Only the
    image changes: like random erasing, the per-pixel targets keep their values
    (the bone is still there behind the shutter). Draws use torch's global generator.
    """

    def __init__(self, p: float = 0.5, fraction: tuple[float, float] = (0.0, 0.2), p_circular: float = 0.3,
                 rotation_deg: float = 10.0):
        super().__init__()
        if not (0.0 <= p <= 1.0 and 0.0 <= p_circular <= 1.0 and 0.0 <= fraction[0] <= fraction[1] < 0.5):
            raise InputError(f"collimation needs 0 <= p, p_circular <= 1 and 0 <= fraction[0] <= fraction[1] < 0.5, "
                             f"got {p}, {p_circular}, {fraction}")
        self.p, self.fraction, self.p_circular, self.rotation_deg = float(p), tuple(fraction), float(p_circular), float(rotation_deg)

    def field(self, batch: int, H: int, W: int) -> torch.Tensor:
        """``(B, 1, H, W)`` in [0, 1]: 1 inside the open field (all ones for images not collimated)."""
        import math

        v, u = torch.meshgrid(torch.arange(H, dtype=torch.float32) - (H - 1) / 2,
                              torch.arange(W, dtype=torch.float32) - (W - 1) / 2, indexing="ij")
        out = torch.ones(batch, 1, H, W)
        for b in range(batch):
            if float(torch.rand(())) >= self.p:
                continue
            if float(torch.rand(())) < self.p_circular:
                c = (torch.rand(2) - 0.5) * 0.1 * torch.tensor([W, H], dtype=torch.float32)
                r = (0.8 + 0.3 * float(torch.rand(()))) * min(H, W) / 2
                dist = r - torch.sqrt((u - c[0]) ** 2 + (v - c[1]) ** 2)
            else:
                lo, hi = self.fraction
                f = lo + (hi - lo) * torch.rand(4)
                a = math.radians(self.rotation_deg) * (2 * float(torch.rand(())) - 1)
                ur = math.cos(a) * u + math.sin(a) * v
                vr = -math.sin(a) * u + math.cos(a) * v
                dist = torch.stack([ur + W / 2 - f[0] * W, W / 2 - f[1] * W - ur,
                                    vr + H / 2 - f[2] * H, H / 2 - f[3] * H - vr]).amin(0)
            out[b, 0] = (dist + 0.5).clamp(0.0, 1.0)
        return out

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        B, _, H, W = image.shape
        return image * self.field(B, H, W).to(image)


#: Per-pixel ground-truth fields that :func:`zoom_sample` resamples by nearest
#: neighbour (values on both sides of an edge are never averaged): the scene
#: coordinates of :mod:`xrecon.sim.dataset` and the canonical coordinates of
#: the reconstruction data (:mod:`xrecon.methods.recon.data`).
ZOOM_NEAREST_FIELDS = ("entry_world", "exit_world", "mask", "canonical")


class ZoomAugment(Dataset):
    """Random zoom-in about the principal point, for the dense networks (SCR, recon).

    Zooming an X-ray by ``z`` about its principal point is *exactly* the image
    of a camera with the focal length times ``z`` at the same pose: every pixel
    still sees the ray it saw, so per-pixel ground truth attached to the ray
    (scene coordinates, canonical coordinates, the bone mask) stays valid when
    it is resampled with the image. The bone then looks ``z`` times closer:
    the magnification varies independently of the pose, which a network must
    read to get the depth right (docs/scr.md). Zoom-in only, so no pixel falls
    outside the simulated image. ``K`` is updated (when the sample has one);
    the pose is not. Every sample gets ``zoom`` (a float tensor, 1 when not
    zoomed), so a loss can drop labels that a zoom invalidates (the
    reconstruction's absolute size). Not for PoseNet / landmarks, whose pose
    labels assume the true ``K``.

    Args:
        base: dataset of dict samples with ``image (1, H, W)`` and optionally
            the fields of :data:`ZOOM_NEAREST_FIELDS` (any leading dimensions,
            last two ``H, W``) and ``K (3, 3)``.
        K: ``(3, 3)`` intrinsics of the images (the principal point is the zoom centre).
        max_zoom: largest factor (zoom drawn uniformly in ``[1, max_zoom]``).
        p: probability that a sample is zoomed. Draws use torch's global
            generator, like :class:`Augmenter`.
    """

    def __init__(self, base, K, max_zoom: float = 1.15, p: float = 0.5):
        if not max_zoom >= 1.0 or not 0.0 <= p <= 1.0:
            raise InputError(f"zoom augmentation needs max_zoom >= 1 and 0 <= p <= 1, got {max_zoom}, {p}")
        self.base, self.max_zoom, self.p = base, float(max_zoom), float(p)
        self.K = torch.as_tensor(K, dtype=torch.float64).reshape(3, 3)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        sample = self.base[index]
        if self.max_zoom == 1.0 or float(torch.rand(())) >= self.p:
            return {**sample, "zoom": torch.tensor(1.0)}
        return zoom_sample(sample, self.K, 1.0 + float(torch.rand(())) * (self.max_zoom - 1.0))


def zoom_sample(sample: dict, K, zoom: float) -> dict:
    """``sample`` (see :class:`ZoomAugment`) zoomed by ``zoom`` about ``K``'s
    principal point: the image bilinearly, the fields of
    :data:`ZOOM_NEAREST_FIELDS` by nearest neighbour, ``K``'s focal lengths
    times ``zoom``; ``zoom`` is recorded in the sample."""
    import torch.nn.functional as F

    K = torch.as_tensor(K, dtype=torch.float64).reshape(3, 3)
    H, W = sample["image"].shape[-2:]
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    cx, cy = float(K[0, 2]), float(K[1, 2])
    src_u, src_v = cx + (u - cx) / zoom, cy + (v - cy) / zoom
    grid = torch.stack([(src_u + 0.5) / W * 2 - 1, (src_v + 0.5) / H * 2 - 1], dim=-1)[None].float()

    def resample(x: torch.Tensor, mode: str) -> torch.Tensor:
        shape = x.shape
        y = F.grid_sample(x.float().reshape(1, -1, H, W), grid, mode=mode, padding_mode="border",
                          align_corners=False)
        return y.reshape(shape).to(x.dtype)

    out = dict(sample)
    out["image"] = resample(sample["image"], "bilinear")
    for name in ZOOM_NEAREST_FIELDS:
        if name in sample:
            out[name] = resample(sample[name], "nearest")
    if "K" in sample:
        k = sample["K"].clone()
        k[..., 0, 0] *= zoom
        k[..., 1, 1] *= zoom
        out["K"] = k
    out["zoom"] = torch.tensor(float(zoom))
    return out
