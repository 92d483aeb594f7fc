"""``xrecon reconstruct`` / ``xrecon register`` with several X-rays: bad inputs (cameras
and images that do not pair up, a camera without its pose in the shared world frame,
images of different sizes, two views from one pose) give one line naming the
problem, exit code 2, and write nothing; the API refuses the same."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from xrecon.cli.main import app
from xrecon.errors import InputError

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
runner = CliRunner()


def _view(tmp: Path, name: str, world_to_cam=None, size: int | None = None) -> tuple[Path, Path]:
    """A copy of the example X-ray (or a ``size`` px noise image) and a camera JSON
    ``<name>_camera.json``: the example's geometry, with ``world_to_cam`` when given."""
    img = tmp / f"{name}.png"
    cam = json.loads((EXAMPLES / "pelvis_xray.json").read_text())
    cam.pop("world_to_cam")
    if size is None:
        shutil.copy(EXAMPLES / "pelvis_xray.png", img)
    else:
        Image.fromarray((np.random.default_rng(0).random((size, size)) * 255).astype(np.uint8)).save(img)
        cam.pop("K")
        cam["height"] = cam["width"] = size
        cam["pixel_spacing_mm"] = 298.0 / size
    if world_to_cam is not None:
        cam["world_to_cam"] = np.asarray(world_to_cam).tolist()
    path = tmp / f"{name}_camera.json"
    path.write_text(json.dumps(cam))
    return img, path


def _pose(angle_deg: float) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    T = np.eye(4)
    T[:3, :3] = Rotation.from_euler("y", angle_deg, degrees=True).as_matrix()
    T[:3, 3] = [0.0, 0.0, 765.0]
    return T


def _fails_cleanly(result, out: Path, *words):
    assert result.exit_code == 2, result.output
    text = result.output.lower()
    assert "xrecon: error:" in text and len(text.strip().splitlines()) == 1, text
    for w in words:
        assert w.lower() in text, text
    assert not out.exists() or not any(out.iterdir())


CASES = ["fewer cameras", "more cameras", "no world_to_cam", "different sizes", "same pose"]


def _argv(case: str, tmp: Path) -> tuple[list[str], list[str]]:
    """The X-rays and --camera options of a bad case, and the words its error must hold."""
    a, ca = _view(tmp, "a", _pose(0.0))
    b, cb = _view(tmp, "b", _pose(60.0))
    if case == "fewer cameras":
        return [str(a), str(b), "--camera", str(ca)], ["2 images but 1 camera"]
    if case == "more cameras":
        return [str(a), "--camera", str(ca), "--camera", str(cb)], ["1 image but 2 cameras"]
    if case == "no world_to_cam":
        b, cb = _view(tmp, "b", None)
        return [str(a), str(b), "--camera", str(ca), "--camera", str(cb)], ["b_camera.json", "world_to_cam"]
    if case == "different sizes":
        b, cb = _view(tmp, "b", _pose(60.0), size=64)
        return [str(a), str(b), "--camera", str(ca), "--camera", str(cb)], ["b.png", "differ in size"]
    b, cb = _view(tmp, "b", _pose(0.0))
    return [str(a), str(b), "--camera", str(ca), "--camera", str(cb)], ["b.png", "same world_to_cam"]


@pytest.mark.parametrize("case", CASES)
def test_reconstruct_refuses_views_that_do_not_pair_up(tmp_path, case):
    views, words = _argv(case, tmp_path)
    out = tmp_path / "out"
    _fails_cleanly(runner.invoke(app, ["reconstruct", *views, "--out", str(out)]), out, *words)


@pytest.mark.parametrize("case", ["fewer cameras", "no world_to_cam", "different sizes"])
def test_register_refuses_views_that_do_not_pair_up(tmp_path, case):
    views, words = _argv(case, tmp_path)
    out = tmp_path / "out"
    res = runner.invoke(app, ["register", *views, "--ct", str(EXAMPLES / "pelvis_ct.nii.gz"), "--out", str(out)])
    _fails_cleanly(res, out, *words)


def test_register_refuses_refinement_of_views_without_a_shared_frame(tmp_path):
    a, ca = _view(tmp_path, "a", _pose(0.0))
    b, cb = _view(tmp_path, "b", _pose(60.0))
    out = tmp_path / "out"
    res = runner.invoke(app, ["register", str(a), str(b), "--camera", str(ca), "--camera", str(cb), "--ct",
                              str(EXAMPLES / "pelvis_ct.nii.gz"), "--refine", "--independent-views",
                              "--out", str(out)])
    _fails_cleanly(res, out, "refine")


def test_a_sidecar_without_world_to_cam_is_named(tmp_path):
    """Without --camera each X-ray's own sidecar is read; the example's has a pose,
    a copy without one is refused, naming the sidecar."""
    from xrecon import api

    a, ca = _view(tmp_path, "a", _pose(0.0))
    b, cb = _view(tmp_path, "b", None)
    shutil.copy(ca, tmp_path / "a.json")
    shutil.copy(cb, tmp_path / "b.json")
    with pytest.raises(InputError, match=r"b\.json.*world_to_cam"):
        api.load_views([a, b])
    imgs, cams = api.load_views([a, b], [ca, _view(tmp_path, "c", _pose(60.0))[1]])
    assert len(imgs) == 2 and np.allclose(cams[1].world_to_cam[0].numpy(), _pose(60.0))


@pytest.mark.slow
def test_two_rendered_views_of_the_example_reconstruct_and_register(tmp_path):
    """Integration: two DRRs of the example CT 60 deg apart (cameras in the CT's own frame,
    which is then the shared world frame), through both commands; the CT's pose in that
    world is the identity."""
    import torch

    from xrecon.anatomy.bone import bone_from_labels
    from xrecon.anatomy.ct_io import read_ct, read_labels
    from xrecon.anatomy.xray_io import write_image
    from xrecon.methods.recon.data import ReconDataConfig, model_to_world
    from xrecon.methods.recon.shape import ShapeSpace
    from xrecon.metrics.registration import mtre_mm
    from xrecon.sim.drr import DrrRenderer
    from xrecon.sim.poses import carm_pose

    torch.set_num_threads(1)
    truth = json.loads((EXAMPLES / "pelvis_truth.json").read_text())
    space = ShapeSpace.bundled("pelvis")
    m2w = model_to_world(space)
    # patient frame (RAS, the simulator's) -> camera of the example, and the CT's frame -> patient
    patient_to_cam = np.asarray(truth["model_to_cam"]) @ np.linalg.inv(m2w)
    ct_to_patient = np.linalg.inv(patient_to_cam) @ np.asarray(truth["ct_to_cam"])
    cfg = ReconDataConfig(split="test")
    camera = cfg.camera()
    patient_to_cams = carm_pose(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([-30.0, 30.0]), torch.zeros(1),
                                torch.zeros(1), torch.tensor([765.0])).numpy()
    ct = read_ct(EXAMPLES / "pelvis_ct.nii.gz")
    renderer = DrrRenderer(ct, camera, spacing_mm=2.0, n_samples=128)
    views = []
    for i, p2c in enumerate(patient_to_cams):
        w2c = p2c @ ct_to_patient  # world = the CT's frame
        with torch.no_grad():
            img = renderer(torch.as_tensor(w2c[None], dtype=torch.float32))[0].numpy()
        write_image(tmp_path / f"v{i}.png", (img - img.min()) / (img.max() - img.min()), bits=16)
        camera.with_pose(torch.as_tensor(w2c)).save(tmp_path / f"v{i}_camera.json")
        views += [str(tmp_path / f"v{i}.png")]
    cams = sum([["--camera", str(tmp_path / f"v{i}_camera.json")] for i in range(2)], [])
    out = tmp_path / "recon"
    res = runner.invoke(app, ["reconstruct", *views, *cams, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert {"reconstruction_world.ply", "reconstruction_world.stl", "points.csv", "points_world.ply", "pose.json",
            "overlay_0.png", "overlay_1.png"} <= {p.name for p in out.iterdir()}
    pose = json.loads((out / "pose.json").read_text())
    assert pose["to_frame"].startswith("world") and len(pose["model_to_cam"]) == 2
    assert [v["status"] for v in pose["views"]] == ["used", "used"], pose["views"]
    out2 = tmp_path / "register"
    res = runner.invoke(app, ["register", *views, *cams, "--ct", str(EXAMPLES / "pelvis_ct.nii.gz"),
                              "--labels", str(EXAMPLES / "pelvis_labels.nii.gz"), "--refine", "--out", str(out2)])
    assert res.exit_code == 0, res.output
    assert "refinement over 2 views" in res.output
    reg = json.loads((out2 / "registration.json").read_text())
    assert reg["from_frame"].startswith("the CT") and reg["to_frame"].startswith("world")
    bone = bone_from_labels(read_labels(EXAMPLES / "pelvis_labels.nii.gz"))
    err_before = float(mtre_mm(np.array(reg["ct_to_world_before_refinement"]), np.eye(4), bone.vertices[::20])[0])
    err = float(mtre_mm(np.array(reg["matrix"]), np.eye(4), bone.vertices[::20])[0])
    assert err_before < 5.0, err_before
    # one intensity loss over both views: the DRRs come from this CT, so its optimum is the truth
    assert reg["refined"] and err < 1.5 and err < err_before, (err_before, err)
    for i in range(2):
        np.testing.assert_allclose(reg["ct_to_cam"][i]["matrix"],
                                   patient_to_cams[i] @ ct_to_patient @ np.array(reg["matrix"]), atol=1e-6)


def test_a_list_of_one_image_is_the_single_view_call(tmp_path):
    """``api.reconstruct([img], cameras=[cam])`` is ``api.reconstruct(img, cam)``: same type,
    same pose (an untrained network: whatever it returns, both calls return the same)."""
    import torch

    from xrecon import api
    from xrecon.methods.recon.model_io import save_recon_model
    from xrecon.methods.recon.network import ReconNet, ReconNetConfig
    from xrecon.methods.recon.pipeline import Reconstruction
    from xrecon.methods.recon.shape import ShapeSpace

    space = ShapeSpace.bundled("pelvis")
    torch.manual_seed(0)
    net = ReconNet(ReconNetConfig(n_modes=space.n_modes, base_channels=8, levels=3, image_size=32))
    model = tmp_path / "tiny.pt"
    save_recon_model(model, net, space, "pelvis")
    img, cam = _view(tmp_path, "a", _pose(0.0))
    one = api.reconstruct([img], cameras=[cam], model=model)
    plain = api.reconstruct(img, cam, model=model)
    assert isinstance(one, Reconstruction) and isinstance(plain, Reconstruction)
    assert one.success == plain.success and one.reason == plain.reason
    np.testing.assert_array_equal(one.model_to_cam, plain.model_to_cam)
    with pytest.raises(InputError, match="1 image but 2 cameras"):
        api.reconstruct([img], cameras=[cam, cam], model=model)


def _carm_view(tmp: Path, name: str, primary: float) -> tuple[Path, Path]:
    """A copy of the example X-ray with a camera JSON giving C-arm angles instead of a world_to_cam."""
    img, cam = _view(tmp, name, None)
    d = json.loads(cam.read_text())
    d.update({"primary_angle_deg": primary, "secondary_angle_deg": 0.0, "source_to_isocentre_mm": 765.0})
    cam.write_text(json.dumps(d))
    return img, cam


def test_frames_that_disagree_are_refused(tmp_path):
    """One camera in some world_to_cam frame, the other posed by C-arm angles (the isocentre
    frame): nothing relates the two, so the pair is refused, naming the second camera."""
    a, ca = _view(tmp_path, "a", _pose(0.0))
    b, cb = _carm_view(tmp_path, "b", 30.0)
    out = tmp_path / "out"
    res = runner.invoke(app, ["reconstruct", str(a), str(b), "--camera", str(ca), "--camera", str(cb), "--out",
                              str(out)])
    _fails_cleanly(res, out, "b_camera.json", "frames disagree", "--independent-views")
    res = runner.invoke(app, ["register", str(a), str(b), "--camera", str(ca), "--camera", str(cb), "--ct",
                              str(EXAMPLES / "pelvis_ct.nii.gz"), "--out", str(out)])
    _fails_cleanly(res, out, "b_camera.json", "frames disagree")


def test_c_arm_angles_in_the_camera_files_are_a_shared_frame(tmp_path):
    from xrecon import api
    from xrecon.geometry.carm import carm_world_to_cam

    a, ca = _carm_view(tmp_path, "a", -15.0)
    b, cb = _carm_view(tmp_path, "b", 15.0)
    _, cams = api.load_views([a, b], [ca, cb])
    np.testing.assert_allclose(cams[1].world_to_cam[0].numpy(), carm_world_to_cam(15.0, 0.0, 765.0), atol=1e-12)
    assert api.views_frame([a, b], [ca, cb]) == "isocentre"


def test_independent_views_write_one_camera_frame_per_view(tmp_path):
    """``--independent-views``: two films without poses (one of them without a camera pose
    at all) give per-view meshes in each camera's frame, named in every file."""
    a, ca = _view(tmp_path, "a", None)
    b, cb = _view(tmp_path, "b", _pose(60.0))  # its pose is not used
    out = tmp_path / "out"
    res = runner.invoke(app, ["reconstruct", str(a), str(b), "--camera", str(ca), "--camera", str(cb),
                              "--independent-views", "--out", str(out)])
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert {"reconstruction_cam_0.ply", "reconstruction_cam_1.ply", "reconstruction_cam_0.stl", "points.csv",
            "pose.json", "overlay_0.png", "overlay_1.png"} <= names, names
    assert not any("world" in n for n in names)
    pose = json.loads((out / "pose.json").read_text())
    assert pose["world_frame"].startswith("none") and pose["shared_frame"] is False
    assert pose["to_frame"].startswith("camera of view 0") and len(pose["model_to_cam"]) == 2
    assert all("world_to_cam" not in c["camera"] for c in pose["cameras"])
    side = json.loads((out / "reconstruction_cam_1.ply.json").read_text()) if (
        out / "reconstruction_cam_1.ply.json").exists() else json.loads((out / "reconstruction_cam_1.json").read_text())
    assert "camera of view 1" in json.dumps(side)
    # the same X-ray twice: both views' poses are one pose of one shape (up to each view's random
    # subset of correspondences in the joint fit)
    P0, P1 = (np.array(pose["model_to_cam"][i]["matrix"]) for i in range(2))
    np.testing.assert_allclose(P0[:3, :3], P1[:3, :3], atol=5e-3)
    np.testing.assert_allclose(P0[:3, 3], P1[:3, 3], atol=2.0)
