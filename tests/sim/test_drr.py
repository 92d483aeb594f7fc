"""The DiffDRR adapter: pose / intrinsics mapping, geometry of rendered images,
gradients, resampling, bone-only rendering, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError
from xrecon.geometry import Camera, se3
from xrecon.sim.drr import (
    DrrRenderer,
    box_resample,
    diffdrr_pose_from_world_to_cam,
    drr_correlation,
    hu_to_density,
    render_drr,
    world_to_cam_from_diffdrr_pose,
)

from .conftest import ball_phantom, look_at

BALL = np.array([5.0, -8.0, 50.0])

# (height, width, pixel spacing (dx, dy) mm, principal offset (x0, y0) mm)
DETECTORS = [
    (64, 64, (2.0, 2.0), (0.0, 0.0)),
    (48, 80, (1.5, 1.5), (6.0, -4.5)),
    (81, 57, (1.2, 1.7), (-3.0, 7.0)),
]


def _poses(n=4, seed=0, distance=400.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        direction = torch.randn(3, generator=g, dtype=torch.float64)
        direction /= direction.norm()
        jitter = torch.randn(3, generator=g, dtype=torch.float64) * 3.0
        up = torch.randn(3, generator=g, dtype=torch.float64)
        out.append(look_at(torch.tensor(BALL) + distance * direction, torch.tensor(BALL) + jitter, up))
    return torch.stack(out)


@pytest.fixture(scope="module")
def phantom():
    return ball_phantom(centre_world=BALL, radius_mm=3.0)


@pytest.mark.parametrize("height,width,spacing,offset", DETECTORS)
def test_projection_matches_diffdrr(phantom, height, width, spacing, offset):
    ct, _ = phantom
    cam = Camera.from_detector(700.0, spacing, height, width, principal_offset_mm=offset)
    renderer = DrrRenderer(ct, cam)
    poses = _poses(4, seed=height)
    g = torch.Generator().manual_seed(1)
    points = torch.tensor(BALL) + torch.randn(4, 30, 3, generator=g, dtype=torch.float64) * 20
    uv, _ = cam.with_pose(poses).project(points)
    uv_diffdrr = renderer.diffdrr_projection(poses, points.float()).double() - 0.5
    assert (uv - uv_diffdrr).abs().max() < 1e-3


def test_pose_conversion_round_trip():
    poses = _poses(6, seed=3)
    M = diffdrr_pose_from_world_to_cam(poses)
    assert torch.allclose(world_to_cam_from_diffdrr_pose(M), poses, atol=1e-12)
    # F = diag(-1, -1, 1) keeps the rotation proper: no mirror hides in the mapping
    assert torch.allclose(torch.linalg.det(M[:, :3, :3]), torch.ones(6, dtype=torch.float64))
    # DiffDRR's camera centre is the source
    assert torch.allclose(M[:, :3, 3], Camera.from_detector(1.0, 1.0, 2, 2, poses).source_world, atol=1e-9)


def _centroid(img: torch.Tensor) -> torch.Tensor:
    """Intensity centroid (u, v) of ``img: (H, W)``."""
    v, u = torch.meshgrid(torch.arange(img.shape[0]), torch.arange(img.shape[1]), indexing="ij")
    w = img.double().clamp(min=0)
    return torch.stack([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()])


@pytest.mark.parametrize("height,width,spacing,offset", DETECTORS)
def test_rendered_ball_lands_on_its_projection(phantom, height, width, spacing, offset):
    ct, labels = phantom
    cam = Camera.from_detector(700.0, spacing, height, width, principal_offset_mm=offset)
    # the centre of mass of the voxelised ball (not BALL: voxels shift it a little)
    ball = torch.tensor(ct.voxel_to_world_points(np.argwhere(labels.data == 1)).mean(0))
    # move each camera so the ball lands well off the image centre (a flip or a
    # half-pixel shift would show), in a different quadrant per view
    targets = torch.tensor([[0.3 * width, 0.7 * height], [0.75 * width, 0.25 * height], [0.6 * width, 0.6 * height]])
    poses = _poses(3, seed=7 + width)
    K_inv = torch.linalg.inv(cam.K[0])
    for b, (u, v) in enumerate(targets.tolist()):
        x_cam = se3.apply(poses[b], ball[None])[0]
        wanted = x_cam[2] * (K_inv @ torch.tensor([u, v, 1.0], dtype=torch.float64))
        poses[b, :3, 3] += wanted - x_cam
    renderer = DrrRenderer(ct, cam, labels=labels, structures=[1], n_samples=300)
    with torch.no_grad():
        img = renderer(poses)
    uv, _ = cam.with_pose(poses).project(ball[None])
    for b in range(len(poses)):
        assert (_centroid(img[b]) - uv[b, 0]).abs().max() < 0.05


def test_gradient_reaches_world_to_cam(phantom):
    ct, labels = phantom
    cam = Camera.from_detector(700.0, 1.5, 48, 48)
    renderer = DrrRenderer(ct, cam, labels=labels, structures=[1], n_samples=200)
    pose = _poses(1, seed=11)
    fx = float(cam.K[0, 0, 0])

    def centroid_u(p):
        img = renderer(p)[0]
        u = torch.arange(img.shape[1], dtype=img.dtype)
        return (img * u).sum() / img.sum()

    p = pose.clone().requires_grad_(True)
    centroid_u(p).backward()
    grad_tx = p.grad[0, 0, 3].item()
    depth = float(cam.with_pose(pose).project(torch.tensor(BALL)[None])[1][0, 0])
    # moving the camera frame by +tx moves the image by +fx/depth px per mm
    assert grad_tx == pytest.approx(fx / depth, rel=0.1)
    with torch.no_grad():
        step = torch.zeros_like(pose)
        step[0, 0, 3] = 0.5
        fd = (centroid_u(pose + step) - centroid_u(pose - step)).item() / 1.0
    assert grad_tx == pytest.approx(fd, rel=0.1)


def test_hu_to_density_matches_diffdrr():
    from diffdrr.data import transform_hu_to_density  # the test may look behind the adapter

    g = np.random.default_rng(0)
    hu = (g.normal(size=(20, 18, 16)) * 700).astype(np.float32)
    ours = hu_to_density(hu)
    theirs = transform_hu_to_density(torch.from_numpy(hu.copy()), 1.0)
    assert (ours - theirs).abs().max() < 1e-6
    box = (slice(2, 9), slice(0, 18), slice(5, 6))
    assert (hu_to_density(hu, box=box) - theirs[box]).abs().max() < 1e-6


def test_box_resample_keeps_integrals_and_world_positions():
    g = torch.Generator().manual_seed(0)
    # constant over 3 x 3 x 1 blocks (the last partial blocks hold zeros), so the
    # block average is known exactly: the coarse volume itself
    coarse = torch.rand(11, 7, 9, generator=g)
    coarse[-1], coarse[:, -1] = 0.0, 0.0
    density = coarse.repeat_interleave(3, 0).repeat_interleave(3, 1)[:31, :20]
    affine = np.array([[0.0, 0.7, 0.0, -10.0], [-0.7, 0.0, 0.0, 4.0], [0.0, 0.0, 2.5, 30.0], [0, 0, 0, 1.0]])
    out, out_affine = box_resample(density, affine, 2.0)
    assert out.shape == (11, 7, 9)  # factors 3, 3, 1 (never upsampled)
    assert torch.allclose(out, coarse, atol=1e-6)
    vol_in = np.abs(np.linalg.det(affine[:3, :3]))
    vol_out = np.abs(np.linalg.det(out_affine[:3, :3]))
    assert float(out.sum()) * vol_out == pytest.approx(float(density.sum()) * vol_in, rel=1e-5)

    def com(d, A):
        ijk = np.stack(np.meshgrid(*[np.arange(n) for n in d.shape], indexing="ij"), -1).reshape(-1, 3)
        w = d.reshape(-1).double().numpy()
        return (ijk @ A[:3, :3].T + A[:3, 3]).T @ w / w.sum()

    assert np.abs(com(out, out_affine) - com(density, affine)).max() < 1e-4


def test_resampled_trilinear_correlates_with_siddon():
    ct, _ = ball_phantom(centre_world=BALL, radius_mm=8.0, shape=(60, 56, 50), affine=np.diag([0.7, 0.7, 0.8, 1.0]))
    cam = Camera.from_detector(700.0, 1.0, 40, 40)
    target = ct.center_world
    poses = torch.stack([look_at(target + 350 * d, target) for d in np.eye(3)[[0, 1]]])
    exact = DrrRenderer(ct, cam, renderer="siddon", crop=False)(poses)
    fast = DrrRenderer(ct, cam, spacing_mm=2.0, n_samples=100)(poses)
    r = drr_correlation(fast, exact)
    assert (r > 0.99).all()
    # same units: mean intensities agree within a few percent
    assert torch.allclose(fast.mean((1, 2)), exact.mean((1, 2)), rtol=0.05)


def test_crop_is_lossless(phantom):
    ct, _ = phantom
    cam = Camera.from_detector(700.0, 1.5, 40, 44)
    poses = _poses(2, seed=5)
    cropped = DrrRenderer(ct, cam, renderer="siddon")
    full = DrrRenderer(ct, cam, renderer="siddon", crop=False)
    assert np.prod(cropped.render_shape) < np.prod(full.render_shape)
    with torch.no_grad():
        a, b = cropped(poses), full(poses)
    assert (a - b).abs().max() < 1e-3 * b.abs().max()


def test_bad_volumes_raise_input_errors(phantom):
    ct, labels = phantom
    cam = Camera.from_detector(700.0, 1.5, 16, 16)
    nan = ct.data.copy()
    nan[5, 5, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        DrrRenderer(Volume(nan, ct.voxel_to_world, "nan.nii"), cam)
    with pytest.raises(InputError, match="soft-tissue"):
        DrrRenderer(Volume(np.full(ct.shape, 2000.0, dtype=np.float32), ct.voxel_to_world, "bone.nii"), cam)
    with pytest.raises(InputError, match="empty mask"):
        DrrRenderer(ct, cam, labels=labels, structures=[7])
    shifted = labels.voxel_to_world.copy()
    shifted[:3, 3] += 1.0
    moved = Volume(labels.data, shifted, "lab.nii")
    with pytest.raises(InputError, match="grid"):
        DrrRenderer(ct, cam, labels=moved, structures=[1])


def test_render_drr_is_the_renderer_in_one_call(phantom):
    ct, _ = phantom
    cam = Camera.from_detector(700.0, 1.5, 20, 24, _poses(2, seed=9))
    expected = DrrRenderer(ct, cam, spacing_mm=2.0, n_samples=64)(cam.world_to_cam)
    assert torch.allclose(render_drr(ct, cam, spacing_mm=2.0, n_samples=64), expected)


@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_fused_trilinear_integration_equals_diffdrr_renderer(phantom, interpolation):
    ct, _ = phantom
    cam = Camera.from_detector(700.0, (1.2, 1.7), 33, 41, principal_offset_mm=(3.0, -2.0))
    renderer = DrrRenderer(ct, cam, spacing_mm=2.0, n_samples=90, interpolation=interpolation)
    weights = torch.rand(33, 41, generator=torch.Generator().manual_seed(0))

    def diffdrr_image(poses):  # DiffDRR's own Trilinear module on the same rays and bounds
        source, target = renderer.drr.detector(renderer.diffdrr_pose(poses), None)
        lo, hi = renderer._ray_box_alphas(source, target)
        img = renderer.drr.render(renderer.drr.density, source, target, n_points=90, alphamin=lo, alphamax=hi)
        return img.view(len(poses), 33, 41)

    grads = []
    for render in (renderer, diffdrr_image):
        poses = _poses(3, seed=4).requires_grad_(True)
        img = render(poses)
        (img * weights).sum().backward()
        grads.append((img.detach(), poses.grad))
    (ours, g_ours), (theirs, g_theirs) = grads
    assert (ours - theirs).abs().max() < 1e-5 * theirs.abs().max()
    if interpolation == "linear":  # nearest sampling has no useful pose gradient
        assert torch.allclose(g_ours, g_theirs, rtol=1e-3, atol=1e-4 * g_theirs.abs().max())
