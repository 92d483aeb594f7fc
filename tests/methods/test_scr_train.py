"""SCR training through the shared loop, the model file, and register_scr, on
tiny synthetic ellipsoid scenes (exact scene coordinates)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _scr_scene import CENTRE_MM, EllipsoidDataset, surface_points  # noqa: E402

from xrecon.errors import InputError  # noqa: E402
from xrecon.methods.scr.model_io import load_scr_model  # noqa: E402
from xrecon.methods.scr.network import CoordinateNormalizer, SceneCoordinateNet  # noqa: E402
from xrecon.methods.scr.predict import SCRInferenceConfig, register_scr  # noqa: E402
from xrecon.methods.scr.train import SCRNetConfig, train_scr  # noqa: E402
from xrecon.methods.scr.unet import load_adding_branch  # noqa: E402
from xrecon.train import TrainConfig  # noqa: E402

torch.set_num_threads(1)


def _run(out, epochs, net_config=SCRNetConfig(base_channels=8, levels=3), **kw):
    tr, va = EllipsoidDataset(24, seed=0), EllipsoidDataset(4, seed=1)
    cfg = TrainConfig(out_dir=str(out), epochs=epochs, batch_size=8, lr=3e-3, warmup_steps=0, progress=False,
                      num_threads=1, schedule="constant")
    return train_scr(
        tr, va, normalizer=CoordinateNormalizer.from_points(surface_points()), camera=tr.camera[0],
        targets_world=surface_points(8, seed=9), target_names=[f"t{i}" for i in range(8)], train_config=cfg,
        net_config=net_config, inference=SCRInferenceConfig(reproj_threshold_px=2.0),
        ct_info={"path": "<ellipsoid>", "sha256": "0" * 64, "structures": ["ellipsoid"]},
        run_info={"command": "test"}, **kw)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("scr")
    path, result = _run(out, epochs=6)
    return out, path, result


def test_training_lowers_the_loss_and_writes_the_run_files(trained):
    out, path, result = trained
    hist = result.history
    assert len(hist) == 6
    assert hist[-1]["train"]["loss"] < hist[0]["train"]["loss"]
    assert hist[-1]["train"]["coord_error_mm"] < 0.7 * hist[0]["train"]["coord_error_mm"]
    assert {"mtre_clipped_mm", "gfr10", "pnp_success"} <= set(hist[-1]["val_metrics"])
    for name in ("config.json", "history.json", "curves.png", "checkpoints/last.pt", "scr.pt", "scr.json"):
        assert (out / name).exists(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["run_info"]["method"] == "scr" and cfg["train_config"]["monitor"] == "coord_error_mm"


def test_training_resumes_from_the_last_checkpoint(trained, caplog):
    out, _, result = trained
    import logging

    caplog.set_level(logging.INFO)
    _, more = _run(out, epochs=7)
    assert len(more.history) == 7 and more.history[:6] == result.history
    assert "resumed" in caplog.text


def test_model_file_round_trip_and_register(trained):
    out, path, _ = trained
    model, info = load_scr_model(path)
    assert np.allclose(model.normalizer.centre_mm, CoordinateNormalizer.from_points(surface_points()).centre_mm)
    assert info.camera.height == 32 and info.targets_world.shape == (8, 3) and info.ct["structures"] == ["ellipsoid"]
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["format"] == "xrecon-scr" and "state_dict" not in side
    # the stored inference settings are the validation-best candidate
    records = info.training["inference_calibration"]
    best = min(records, key=lambda r: (r["gfr10"], r["median_mtre_mm"]))
    assert len(records) == 16 and info.inference == best["config"]
    ds = EllipsoidDataset(1, seed=7)
    res = register_scr(ds.image[0], ds.camera[0], path)
    assert res.world_to_cam.shape == (4, 4) and res.timings_s["network"] > 0
    assert res.success == np.isfinite(res.world_to_cam).all()
    d = res.to_dict()
    assert json.loads(json.dumps(d))["frame"].startswith("world_to_cam")
    # an image of another size than its camera is refused, and refinement needs the CT
    with pytest.raises(InputError):
        register_scr(ds.image[0][:16], ds.camera[0], path)
    with pytest.raises(InputError, match="needs the CT"):
        register_scr(ds.image[0], ds.camera[0], path, refine=True)


def test_init_adds_a_full_resolution_branch_that_starts_as_a_no_op(trained, tmp_path):
    _, path, _ = trained
    start, _ = load_scr_model(path)
    wide = SceneCoordinateNet(start.normalizer, 8, 3, 2, fine_channels=4)
    load_adding_branch(wide, start.state_dict(), path)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(wide.eval()(x), start.eval()(x))
    # fine-tuning from the model adds the branch, trains it, and records it in the model file
    fine_cfg = SCRNetConfig(base_channels=8, levels=3, fine_channels=4)
    new_path, result = _run(tmp_path / "fine", 2, fine_cfg, init=path)
    tuned, info = load_scr_model(new_path)
    assert info.network["fine_channels"] == 4 and tuned.fine is not None
    assert tuned.fine.head.weight.abs().sum() > 0  # the zero-initialised head moved
    assert json.loads((tmp_path / "fine" / "config.json").read_text())["run_info"]["init"] == str(path)
    # a U-Net of another size cannot start from it
    with pytest.raises(InputError, match="differs"):
        _run(tmp_path / "other", 1, SCRNetConfig(base_channels=4, levels=3), init=path)


def test_loading_something_else_fails_clearly(tmp_path):
    bad = tmp_path / "x.pt"
    torch.save({"weights": 1}, bad)
    with pytest.raises(InputError, match="not a patient-specific SCR model"):
        load_scr_model(bad)
    with pytest.raises(InputError, match="no such model file"):
        load_scr_model(tmp_path / "missing.pt")
    (tmp_path / "t.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(InputError, match="cannot read"):
        load_scr_model(tmp_path / "t.pt")


def test_layout_term_adds_the_in_plane_scale_error_of_the_predicted_coordinates():
    """A 'network' whose scene coordinates are the truth spread 2 % wider in the image
    plane: the layout term is 2 (per cent), and the loss grows by weight x 2."""
    from torch.utils.data import default_collate

    from xrecon.methods.scr.train import make_loss_fn

    ds = EllipsoidDataset(2, size=32, seed=3)
    batch = default_collate([ds[i] for i in range(2)])
    norm = CoordinateNormalizer(tuple(CENTRE_MM), 60.0)
    c = torch.tensor(CENTRE_MM, dtype=torch.float32)[None, :, None, None]
    rot = batch["world_to_cam"][:, :3, :3].float()
    mask = batch["mask"]
    # the true coordinates (normalised) in camera axes, entry and exit
    both = torch.stack([torch.einsum("bij,bjhw->bihw", rot, torch.nan_to_num((batch[k] - c) / 60.0))
                        for k in ("entry_world", "exit_world")], 1)  # (B, 2, 3, H, W)
    m = mask[:, None, None].float()
    centre = (both * m).sum(dim=(1, 3, 4), keepdim=True) / (2 * m.sum(dim=(1, 3, 4), keepdim=True))
    grown = both.clone()
    grown[:, :, :2] = centre[:, :, :2] + 1.02 * (both[:, :, :2] - centre[:, :, :2])
    pred = torch.einsum("bji,bsjhw->bsihw", rot, grown)  # back to world axes (normalised)
    log_sigma = torch.zeros_like(pred[:, :, :1])
    output = torch.cat([pred[:, 0], log_sigma[:, 0], pred[:, 1], log_sigma[:, 1]], dim=1)

    def fixed(_image):
        return output

    base, logs0 = make_loss_fn(norm)(fixed, batch)
    total, logs = make_loss_fn(norm, layout_weight=0.5)(fixed, batch)
    assert "scale_error_pct" not in logs0
    assert abs(float(logs["scale_error_pct"]) - 2.0) < 0.02
    assert abs(float(total - base) - 0.5 * 2.0) < 0.01


def test_along_ray_weight_ignores_errors_that_do_not_move_the_projection():
    """A 'network' whose scene coordinates are the exact ellipsoid points slid 2 % along
    their own rays: with ``along_ray_weight`` = 0 its likelihood equals the truth's (the
    source is found from ``world_to_cam``); with the seed's loss it is worse."""
    from torch.utils.data import default_collate

    from xrecon.methods.scr.train import make_loss_fn

    ds = EllipsoidDataset(2, size=32, seed=4)
    batch = default_collate([ds[i] for i in range(2)])
    norm = CoordinateNormalizer(tuple(CENTRE_MM), 60.0)
    c = torch.tensor(CENTRE_MM, dtype=torch.float32)[None, :, None, None]
    w2c = batch["world_to_cam"].double()
    source = -torch.einsum("bji,bj->bi", w2c[:, :3, :3], w2c[:, :3, 3]).float()[:, :, None, None]

    def output_for(shift: float):
        maps = []
        for k in ("entry_world", "exit_world"):
            x = torch.nan_to_num(batch[k])
            maps += [(x + shift * (x - source) - c) / 60.0, torch.full_like(x[:, :1], -1.0)]
        return torch.cat(maps, dim=1)

    def loss(output, weight):
        return make_loss_fn(norm, along_ray_weight=weight)(lambda _image: output, batch)[0]

    exact, slid = output_for(0.0), output_for(0.02)
    assert abs(float(loss(slid, 0.0) - loss(exact, 0.0))) < 1e-5
    full = float(loss(slid, 1.0) - loss(exact, 1.0))
    assert full > 0.5
    # half the weight on the along-ray error = a quarter of its squared error in the likelihood
    assert abs(float(loss(slid, 0.5) - loss(exact, 0.5)) - 0.25 * full) < 1e-3
    # the logs split the error the same way: all of the slide is along the rays
    logs = make_loss_fn(norm, along_ray_weight=0.5)(lambda _image: slid, batch)[1]
    assert float(logs["coord_error_mm"]) > 1.0 and float(logs["coord_across_mm"]) < 1e-2
    assert "coord_across_mm" not in make_loss_fn(norm)(lambda _image: slid, batch)[1]
    with pytest.raises(InputError, match="along_ray_weight"):
        SCRNetConfig(along_ray_weight=1.5)
