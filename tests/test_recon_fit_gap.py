"""benchmarks/recon_fit_gap.py: which rows it evaluates, what it says a file holds, and
its metrics on an oracle network with known errors."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from xrecon.methods.recon.data import ReconDataConfig, generate_dataset
from xrecon.methods.recon.loss import ReconLoss
from xrecon.methods.recon.network import ReconOutput
from xrecon.methods.recon.shape import ShapeSpace

SCALE_MM = 100.0


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("recon_fit_gap")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """2 validation-split subjects + 1 random draw, 2 views each, 32 px."""
    cfg = ReconDataConfig(split="val", n_shapes=2, n_random_shapes=1, views_per_shape=2, protocol="seed002",
                          image_size=32, phantom_spacing_mm=4.0, render_spacing_mm=4.0, n_samples=64, seed=5)
    return generate_dataset(tmp_path_factory.mktemp("fitgap") / "train.h5", cfg, progress=False)


class Oracle(nn.Module):
    """Answers with a file's ground truth (looked up by image), its coordinates
    spread by ``spread`` about each image's centroid of bone coordinates."""

    def __init__(self, path, centre_mm, spread: float = 1.0):
        super().__init__()
        with h5py.File(path, "r") as h5:
            self.images = torch.from_numpy(h5["image"][:]).float()
            self.mask = torch.from_numpy(h5["mask"][:]).bool()
            can = (torch.from_numpy(h5["canonical"][:]).float() - torch.as_tensor(centre_mm).float().reshape(
                1, 1, 3, 1, 1)) / SCALE_MM
            self.shape_sd = torch.from_numpy(h5["shape_sd"][:]).float()
        m = self.mask[:, None, None].float()
        centroid = (can * m).sum(dim=(1, 3, 4), keepdim=True) / m.sum(dim=(1, 3, 4), keepdim=True).clamp_min(1)
        self.coords = centroid + spread * (can - centroid)

    def forward(self, image):
        rows = [int(torch.nonzero((self.images == im[0]).all(dim=(1, 2)))[0]) for im in image]
        return ReconOutput(coords=self.coords[rows], log_sigma=torch.zeros(len(rows), 2, *image.shape[-2:]),
                           mask_logit=torch.where(self.mask[rows], 20.0, -20.0), shape_sd=self.shape_sd[rows])


def test_rows_are_the_first_bone_images_and_the_file_is_described(bench, tiny):
    rows, facts = bench.bone_rows(tiny, max_images=3)
    assert list(rows) == [0, 1, 2]
    assert facts == {"images": 6, "bone_images": 6, "subjects": 2, "random_shapes": 1}
    rows, _ = bench.bone_rows(tiny, max_images=None)
    assert len(rows) == 6


@pytest.mark.parametrize("spread, scale_pct", [(1.0, 0.0), (1.03, 3.0)])
def test_metrics_of_an_oracle_network_are_its_known_errors(bench, tiny, spread, scale_pct):
    space = ShapeSpace.bundled("pelvis")
    loss = ReconLoss(torch.as_tensor(space.modes_mm[:, :50]), space.centre_mm, SCALE_MM)
    net = Oracle(tiny, space.centre_mm, spread)
    rows, _ = bench.bone_rows(tiny, max_images=None)
    m = bench.network_metrics(net, loss, tiny, rows, batch_size=4)  # two batches, the last one short
    assert m["mask_iou"] == pytest.approx(1.0)
    assert m["size_sd_abs"] == pytest.approx(0.0, abs=1e-6) and m["shape_mm"] == pytest.approx(0.0, abs=1e-4)
    assert m["scale_error_pct"] == pytest.approx(scale_pct, abs=0.05)
    if spread == 1.0:
        assert m["coord_mm"] == pytest.approx(0.0, abs=0.05)  # float16 storage of the targets
    else:  # every point moved 3 % of its distance to the centroid
        assert 0.3 < m["coord_mm"] < 3.0
