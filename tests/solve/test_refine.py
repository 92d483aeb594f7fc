import math

import numpy as np
import pytest
import torch

from xrecon.anatomy.volume import Volume
from xrecon.errors import InputError, ShapeError
from xrecon.geometry import Camera, se3
from xrecon.metrics.registration import mtre_mm
from xrecon.sim.drr import DrrRenderer
from xrecon.solve.refine import IntensityRefiner, MultiViewRefiner, PoseIncrement, RefineConfig, RefineLevel

torch.set_num_threads(1)

BALLS = np.array([[-20.0, -10.0, 5.0], [15.0, 12.0, -18.0], [5.0, -22.0, 20.0], [-8.0, 18.0, 15.0]])
RADII = [9.0, 6.0, 5.0, 7.0]
LEVELS = (RefineLevel(24, 4.0, 60, 1.0, 3.0), RefineLevel(48, 2.0, 40, 0.3, 1.0))


@pytest.fixture(scope="module")
def scene():
    """Four bony balls in a soft-tissue block (2 mm voxels), a 48 px AP-like view."""
    shape = (50, 50, 50)
    A = np.diag([2.0, 2.0, 2.0, 1.0])
    A[:3, 3] = -49.0
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    xyz = ijk * 2.0 - 49.0
    hu = np.full(len(xyz), 0.0, dtype=np.float32)
    for c, r in zip(BALLS, RADII):
        hu[np.linalg.norm(xyz - c, axis=1) <= r] = 1200.0
    hu = hu.reshape(shape)
    hu[:2], hu[-2:], hu[:, :2], hu[:, -2:] = -1000, -1000, -1000, -1000
    ct = Volume(hu, A, "balls")
    R = np.array([[-1.0, 0, 0], [0, 0, -1], [0, -1, 0]])
    gt = np.eye(4)
    gt[:3, :3], gt[:3, 3] = R, -R @ np.array([0.0, 500.0, 0.0])
    cam = Camera.from_detector(1000.0, 5.0, 48, 48, torch.tensor(gt))
    with torch.no_grad():
        xray = DrrRenderer(ct, cam, spacing_mm=2.0)(torch.tensor(gt)[None])[0]
    return ct, cam, torch.tensor(gt), xray


def _perturbed(gt, deg, mm, seed):
    rng = np.random.default_rng(seed)
    axis, shift = rng.normal(size=3), rng.normal(size=3)
    axis, shift = axis / np.linalg.norm(axis), shift / np.linalg.norm(shift)
    centre = (gt[:3, :3] @ torch.zeros(3, dtype=torch.float64) + gt[:3, 3]).numpy()
    inc = PoseIncrement(gt, torch.tensor(centre))
    with torch.no_grad():
        inc.rotation.copy_(torch.tensor(axis * math.radians(deg)))
        inc.translation.copy_(torch.tensor(shift * mm))
        return inc()[0]


def test_pose_increment_is_rigid_and_rotates_about_the_centre():
    gt = se3.from_euler(torch.tensor([10.0, 20.0, 30.0], dtype=torch.float64), torch.tensor([1.0, 2.0, 600.0]))
    centre_world = torch.tensor([3.0, -4.0, 5.0], dtype=torch.float64)
    inc = PoseIncrement(gt, se3.apply(gt, centre_world[None])[0])
    with torch.no_grad():
        inc.rotation.copy_(torch.tensor([0.2, -0.1, 0.3]))
    T = inc()[0].detach()
    assert torch.allclose(T[:3, :3] @ T[:3, :3].T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    # the centre stays where it was in the camera frame
    assert torch.allclose(se3.apply(T, centre_world[None]), se3.apply(gt, centre_world[None]), atol=1e-9)


def test_refinement_recovers_the_pose_of_a_ball_phantom(scene):
    ct, cam, gt, xray = scene
    refiner = IntensityRefiner(ct, cam, config=RefineConfig(levels=LEVELS))
    init = _perturbed(gt, 4.0, 10.0, seed=0)
    res = refiner.refine(xray, init)
    before = float(mtre_mm(init, gt, BALLS))
    after = float(mtre_mm(torch.tensor(res.world_to_cam), gt, BALLS))
    assert res.success, res.reason
    assert before > 8.0 and after < 1.5
    assert res.similarity_final > res.similarity_init
    assert res.history and {h["level"] for h in res.history} == {0, 1}
    assert res.n_iterations == len(res.history) <= sum(lv.max_iterations for lv in LEVELS)


@pytest.mark.parametrize("case", ["constant_image", "nan_image", "nan_pose"])
def test_degenerate_inputs_fail_with_reason_and_keep_the_start(scene, case):
    ct, cam, gt, xray = scene
    refiner = IntensityRefiner(ct, cam, config=RefineConfig(levels=LEVELS[:1]))
    init = gt.clone()
    if case == "constant_image":
        xray = torch.zeros_like(xray)
    elif case == "nan_image":
        xray = xray.clone()
        xray[0, 0] = float("nan")
    elif case == "nan_pose":
        init[0, 3] = float("nan")
    res = refiner.refine(xray, init)
    assert not res.success and res.reason and res.n_iterations == 0
    assert np.array_equal(res.world_to_cam, init.numpy(), equal_nan=True)


def test_bad_arguments_raise_typed_errors(scene):
    ct, cam, gt, xray = scene
    with pytest.raises(InputError):
        RefineConfig(similarity="mutual_information")
    with pytest.raises(InputError):
        IntensityRefiner(ct, cam, config=RefineConfig(levels=(RefineLevel(96, 2.0, 5, 1.0, 1.0),)))
    refiner = IntensityRefiner(ct, cam, config=RefineConfig(levels=LEVELS[:1]))
    with pytest.raises(ShapeError):
        refiner.refine(xray[:10], gt)


def _rot_z(deg: float) -> torch.Tensor:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    T = torch.eye(4, dtype=torch.float64)
    T[:2, :2] = torch.tensor([[c, -s], [s, c]])
    return T


@pytest.fixture(scope="module")
def two_views(scene):
    """The ball phantom seen AP and from 90 deg about the world's z axis, one world frame."""
    ct, cam, gt, xray = scene
    lateral = gt @ _rot_z(90.0)
    with torch.no_grad():
        xray_lat = DrrRenderer(ct, cam, spacing_mm=2.0)(lateral[None])[0]
    return ct, cam, torch.stack([gt, lateral]), [xray, xray_lat]


def test_one_view_multiview_refinement_equals_the_single_view_one(scene):
    ct, cam, gt, xray = scene
    config = RefineConfig(levels=LEVELS[:1])
    start = _perturbed(gt, 3.0, 6.0, seed=1)
    single = IntensityRefiner(ct, cam, config=config).refine(xray, start)
    # world = camera: the CT-to-world start is the camera pose itself
    multi = MultiViewRefiner(ct, [cam], config=config).refine([xray], torch.eye(4)[None], start)
    assert single.success and multi.success
    np.testing.assert_allclose(multi.world_to_cam, single.world_to_cam, atol=1e-6)
    assert multi.n_iterations == single.n_iterations


def test_a_second_view_fixes_the_depth_that_one_view_leaves_loose(two_views):
    ct, cam, w2c, xrays = two_views
    start = torch.eye(4, dtype=torch.float64)
    start[:3, 3] = torch.tensor([1.0, 12.0, -1.0])  # 12 mm along the AP ray (world y)
    start = start @ _rot_z(2.0)
    before = float(mtre_mm(start, torch.eye(4), BALLS))
    refiner = MultiViewRefiner(ct, [cam, cam], config=RefineConfig(levels=LEVELS))
    res = refiner.refine(xrays, w2c, start)
    after = float(mtre_mm(torch.tensor(res.world_to_cam), torch.eye(4), BALLS))
    assert res.success, res.reason
    assert before > 10.0 and after < 1.0
    # the AP view alone moves the balls across its image, hardly along its ray
    single = IntensityRefiner(ct, cam, config=RefineConfig(levels=LEVELS)).refine(xrays[0], w2c[0] @ start)
    depth_single = abs(float((torch.linalg.inv(w2c[0]) @ torch.tensor(single.world_to_cam))[1, 3]))
    assert depth_single > 3 * abs(float(res.world_to_cam[1, 3]))


def test_multiview_refinement_checks_its_inputs(two_views):
    ct, cam, w2c, xrays = two_views
    refiner = MultiViewRefiner(ct, [cam, cam], config=RefineConfig(levels=LEVELS[:1]))
    with pytest.raises(InputError):
        refiner.refine(xrays[:1], w2c, torch.eye(4))
    with pytest.raises(ShapeError):
        refiner.refine(xrays, w2c[:1], torch.eye(4))
    with pytest.raises(ShapeError):
        refiner.refine([xrays[0], xrays[1][:10]], w2c, torch.eye(4))
    res = refiner.refine([xrays[0], torch.zeros_like(xrays[1])], w2c, torch.eye(4))
    assert not res.success and "constant" in res.reason
    with pytest.raises(InputError):
        MultiViewRefiner(ct, [])
