"""Network, loss, data set and model file of the reconstruction (small sizes)."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from xrecon.errors import InputError
from xrecon.methods.recon.loss import ReconLoss, ReconLossWeights
from xrecon.methods.recon.network import LOG_SIGMA_MAX, LOG_SIGMA_MIN, ReconNet, ReconNetConfig


def tiny_config(**kw):
    base = dict(n_modes=4, base_channels=8, levels=3, image_size=32, coord_centre_mm=(1.0, 2.0, 3.0))
    base.update(kw)
    return ReconNetConfig(**base)


@pytest.mark.parametrize("stride", [1, 2])
def test_outputs_have_their_shapes_and_bounds(stride):
    torch.manual_seed(0)
    net = ReconNet(tiny_config(input_stride=stride, b_max=2.0))
    with torch.no_grad():
        out = net(torch.randn(3, 1, 32, 32) * 1000)
    assert out.coords.shape == (3, 2, 3, 32, 32)
    assert out.log_sigma.shape == (3, 2, 32, 32) and out.mask_logit.shape == (3, 32, 32)
    assert out.shape_sd.shape == (3, 4)
    assert out.shape_sd.abs().max() < 2.0
    assert LOG_SIGMA_MIN <= float(out.log_sigma.min()) and float(out.log_sigma.max()) <= LOG_SIGMA_MAX
    p = torch.tensor([[10.0, 20.0, 30.0]])
    assert torch.allclose(net.denormalize(net.normalize(p)), p)


def test_config_rejects_sizes_the_unet_cannot_take():
    with pytest.raises(InputError, match="divisible"):
        ReconNetConfig(n_modes=2, levels=4, input_stride=2, image_size=40)
    with pytest.raises(InputError, match="input_stride 2"):
        ReconNetConfig(n_modes=2, input_stride=1, fine_channels=8)


def test_full_resolution_branch_starts_as_a_no_op_and_learns():
    torch.manual_seed(0)
    coarse = ReconNet(tiny_config(input_stride=2))
    fine = ReconNet(tiny_config(input_stride=2, fine_channels=4))
    missing, unexpected = fine.load_state_dict(coarse.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("fine.") for k in missing)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        a, b = coarse.eval()(x), fine.eval()(x)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    # only the branch trains: one step moves the dense output, not the shape head
    opt = torch.optim.SGD([p for n, p in fine.named_parameters() if n.startswith("fine.")], lr=0.1)
    fine.train()
    fine(x).coords.square().mean().backward()
    opt.step()
    with torch.no_grad():
        c = fine.eval()(x)
    assert not torch.allclose(c.coords, b.coords) and torch.equal(c.shape_sd, b.shape_sd)


def _batch(net, b=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(b, 32, 32)
    mask[:, 8:24, 10:22] = 1
    canonical = torch.randn(b, 2, 3, 32, 32, generator=g) * 30 * mask[:, None, None]
    return {"image": mask[:, None] + 0.1 * torch.randn(b, 1, 32, 32, generator=g), "mask": mask,
            "canonical": canonical, "shape_sd": torch.randn(b, 4, generator=g)}


def test_loss_is_zero_error_for_a_perfect_prediction_and_learns():
    torch.manual_seed(0)
    net = ReconNet(tiny_config())
    modes = torch.randn(4, 50, 3) * 5
    loss = ReconLoss(modes, net.centre_mm, float(net.scale_mm))
    batch = _batch(net)
    out = net(batch["image"])
    perfect = out._replace(coords=net.normalize(batch["canonical"].permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3),
                           shape_sd=batch["shape_sd"])
    terms = loss.per_case(perfect, batch)
    assert torch.allclose(terms["coord"], torch.zeros(4), atol=1e-6)
    assert torch.allclose(terms["shape_mm"], torch.zeros(4), atol=1e-5)
    # a few steps on one batch lower the loss (the gradients reach every head)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = None
    for _ in range(25):
        value, logs = loss(net, batch)
        first = first if first is not None else float(value.detach())
        opt.zero_grad()
        value.backward()
        opt.step()
    assert float(value.detach()) < 0.7 * first
    assert {"coord_mm", "shape_mm", "mask_iou"} <= set(loss.metrics(net, batch))


def test_model_file_round_trip_and_checks(tmp_path):
    from xrecon.methods.recon.model_io import load_recon_model, save_recon_model
    from xrecon.methods.recon.shape import ShapeSpace

    space = ShapeSpace.bundled("pelvis")
    torch.manual_seed(0)
    net = ReconNet(tiny_config(n_modes=space.n_modes)).eval()
    path = tmp_path / "m.pt"
    save_recon_model(path, net, space, "pelvis", {"command": "test"})
    net2, space2, info = load_recon_model(path)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x).coords, net2(x).coords)
    assert info["command"] == "test" and space2.fingerprint == space.fingerprint
    assert path.with_suffix(".json").is_file()
    state = torch.load(path, weights_only=True)
    state["shape_model_fingerprint"] = "0" * 16
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(InputError, match="another version of the shape model"):
        load_recon_model(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match="cannot read"):
        load_recon_model(tmp_path / "junk.pt")


def test_generated_views_agree_with_their_targets(tmp_path):
    """A tiny simulated set: the DRR is brighter where the targets say the bone is,
    and the reader returns what was written."""
    from xrecon.methods.recon.data import ReconDataConfig, ReconH5Dataset, XrayAugment, generate_dataset

    cfg = ReconDataConfig(split="val", n_shapes=1, views_per_shape=2, protocol="seed002", image_size=32,
                          phantom_spacing_mm=4.0, render_spacing_mm=4.0, n_samples=64, seed=3)
    path = generate_dataset(tmp_path / "tiny.h5", cfg, progress=False)
    with h5py.File(path) as h5:
        img, mask, can = h5["image"][:], h5["mask"][:].astype(bool), h5["canonical"][:]
        assert img.shape == (2, 32, 32) and can.shape == (2, 2, 3, 32, 32)
        assert h5.attrs["shape_model_fingerprint"]
    for i in range(2):
        assert mask[i].sum() > 20
        assert img[i][mask[i]].mean() > 1.5 * img[i][~mask[i]].mean()
        assert np.abs(can[i][:, :, ~mask[i]]).max() == 0
    ds = ReconH5Dataset(path, augment=XrayAugment())
    item = ds[1]
    assert item["image"].shape == (1, 32, 32) and 0.0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1.0
    assert torch.equal(item["mask"].bool(), torch.from_numpy(mask[1]))
    # film-like scenes train with collimation too; the default set without (the shipped recipe)
    assert XrayAugment().augmenter.config.p_collimate == 0.0 and "DEFAULT_AUGMENT" in XrayAugment().__name__
    assert XrayAugment(film=True).augmenter.config.p_collimate > 0 and "FILM" in XrayAugment(film=True).__name__


def test_out_of_span_dataset_stores_its_true_shapes(tmp_path):
    """A deformed-population set stores each shape's true vertices (beyond the model's
    span: the coefficients no longer give them), its images show that shape, and the
    in-span population is left to its coefficients (split_shapes, unchanged)."""
    from shape_models.bundled import load_model
    from xrecon.methods.recon.data import ReconDataConfig, dataset_shapes, generate_dataset, split_shapes
    from xrecon.methods.recon.shape import ShapeSpace

    model = load_model("pelvis")
    space = ShapeSpace.from_shape_model(model)
    ssm = ReconDataConfig(split="test", n_shapes=2)
    verts, coeffs, subjects = dataset_shapes(model, space, ssm)
    c0, s0 = split_shapes(model, ssm)
    assert verts is None and np.array_equal(coeffs, c0) and np.array_equal(subjects, s0)

    cfg = ReconDataConfig(split="test", n_shapes=1, views_per_shape=1, protocol="seed002", image_size=32,
                          phantom_spacing_mm=4.0, render_spacing_mm=4.0, n_samples=64, seed=3, population="deformed")
    path = generate_dataset(tmp_path / "deformed.h5", cfg, progress=False)
    with h5py.File(path) as h5:
        shapes, b, idx, mask = h5["shapes"][:], h5["shape_sd"][:], h5["shape_index"][:], h5["mask"][:]
    assert shapes.shape == (1, space.mean_vertices.shape[0], 3) and idx.tolist() == [0]
    # beyond the span: the least-squares instance misses the truth by about the deformation's size
    miss = np.sqrt(((shapes[0] - space.instance(b[0])) ** 2).sum(1).mean())
    assert 0.5 < miss < 10.0, miss
    assert mask[0].sum() > 20
    with pytest.raises(InputError, match="no LLP26 subject is for training"):
        ReconDataConfig(split="train", population="llp26")
    with pytest.raises(InputError, match="only with population='ssm'"):
        ReconDataConfig(population="deformed", n_random_shapes=3)


class _PointwiseNet(torch.nn.Module):
    """Outputs that depend on each pixel alone (a translation-equivariant 'network'),
    so shifting the image and shifting the outputs back must change nothing."""

    def forward(self, image):
        from xrecon.methods.recon.network import ReconOutput

        x = image[:, 0]
        b, h, w = x.shape
        coords = torch.stack([x, 2 * x, x ** 2, -x, x + 1, 3 * x], 1).reshape(b, 2, 3, h, w)
        return ReconOutput(coords, torch.stack([0.1 * x, -0.1 * x], 1), x - 0.5, x.mean((1, 2))[:, None])


def test_shift_averaging_realigns_each_copy_and_is_a_no_op_for_an_equivariant_net():
    from xrecon.methods.recon.predict import TTA_SHIFTS, network_outputs

    x = torch.rand(1, 1, 32, 32)
    one = network_outputs(_PointwiseNet(), x, shifts=1)
    many = network_outputs(_PointwiseNet(), x, shifts=len(TTA_SHIFTS))
    for a, b in zip(one[:3], many[:3]):
        torch.testing.assert_close(a, b)
    assert torch.allclose(one[1][0], 0.1 * x[0, 0]) and torch.allclose(one[2], torch.sigmoid(x[0, 0] - 0.5))
    # a net that is not equivariant (the real one) gives a different, averaged answer
    torch.manual_seed(0)
    net = ReconNet(tiny_config(input_stride=2)).eval()
    single, averaged = network_outputs(net, x, 1)[0], network_outputs(net, x, 4)[0]
    assert averaged.shape == single.shape == (2, 3, 32, 32)
    assert not torch.allclose(single, averaged)
    with pytest.raises(InputError, match="shifts"):
        network_outputs(net, x, 0)


def test_layout_term_is_the_scale_error_in_percent_and_pulls_toward_one():
    torch.manual_seed(0)
    net = ReconNet(tiny_config())
    loss = ReconLoss(torch.randn(4, 50, 3), net.centre_mm, float(net.scale_mm),
                     ReconLossWeights(layout=1.0))
    batch = _batch(net)
    batch["mask"] = torch.ones_like(batch["mask"])
    batch["cam_rotation"] = torch.eye(3).expand(len(batch["image"]), 3, 3)
    out = net(batch["image"])
    truth = net.normalize(batch["canonical"].permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
    centre = truth.mean(dim=(1, 3, 4), keepdim=True)
    grown = truth.clone()
    grown[:, :, :2] = centre[:, :, :2] + 1.02 * (truth[:, :, :2] - centre[:, :, :2])
    terms = loss.per_case(out._replace(coords=grown.requires_grad_()), batch)
    torch.testing.assert_close(terms["layout"], torch.full((len(grown),), 2.0), atol=1e-3, rtol=0)
    terms["layout"].sum().backward()
    # the gradient shrinks the points that are too spread: it points outward from the centre
    assert float((grown.grad[:, :, :2] * (grown[:, :, :2] - centre[:, :, :2]).detach()).sum()) > 0


def test_mask_weight_scales_the_mask_term_of_the_loss():
    """Raising the mask weight from 0.2 to 1.0 adds 0.8 x the mask's cross-entropy
    to the loss and nothing else; a weight of 0 (no mask for the pipeline) is refused."""
    torch.manual_seed(0)
    net = ReconNet(tiny_config())
    modes = torch.randn(4, 50, 3)
    batch = _batch(net)
    low, logs = ReconLoss(modes, net.centre_mm, float(net.scale_mm), ReconLossWeights())(net, batch)
    high, _ = ReconLoss(modes, net.centre_mm, float(net.scale_mm), ReconLossWeights(mask=1.0))(net, batch)
    assert float(logs["mask"]) > 0
    torch.testing.assert_close(high - low, 0.8 * logs["mask"], atol=1e-5, rtol=1e-4)
    with pytest.raises(InputError, match="mask weight"):
        ReconLossWeights(mask=0.0)


def test_along_ray_weight_discounts_errors_along_each_pixels_ray():
    """Predictions slid along their own rays (which PnP cannot see): with ``along_ray`` = w
    the coordinate term is w x the plain error, and the across-ray error reported is 0."""
    torch.manual_seed(0)
    net = ReconNet(tiny_config())
    batch = _batch(net)
    source = torch.tensor([[700.0, -40.0, 30.0]]).expand(len(batch["image"]), 3)
    batch["cam_source"] = source
    truth = batch["canonical"]
    ray = truth - source.reshape(-1, 1, 3, 1, 1)
    slid = truth + 0.01 * ray * batch["mask"][:, None, None]  # 7-ish mm along the ray on bone pixels
    normalise = lambda x: net.normalize(x.permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)  # noqa: E731
    out = net(batch["image"])._replace(coords=normalise(slid))
    modes = torch.randn(4, 50, 3)
    plain = ReconLoss(modes, net.centre_mm, float(net.scale_mm)).per_case(out, batch)
    half = ReconLoss(modes, net.centre_mm, float(net.scale_mm), ReconLossWeights(along_ray=0.5)).per_case(out, batch)
    none = ReconLoss(modes, net.centre_mm, float(net.scale_mm), ReconLossWeights(along_ray=0.0)).per_case(out, batch)
    assert float(plain["coord_mm"].min()) > 5.0
    torch.testing.assert_close(half["coord"], 0.5 * plain["coord"], rtol=1e-4, atol=1e-6)
    assert float(none["coord"].max()) < 1e-4
    # the reported errors do not depend on the weights: full distance and across-ray part
    torch.testing.assert_close(half["coord_mm"], plain["coord_mm"])
    assert float(plain["coord_across_mm"].max()) < 1e-2
    # a sideways error is all across the ray
    side = truth.clone()
    side[:, :, 2] += 4.0 * batch["mask"][:, None]  # +4 mm in z: nearly perpendicular to rays along x
    out = net(batch["image"])._replace(coords=normalise(side))
    terms = ReconLoss(modes, net.centre_mm, float(net.scale_mm), ReconLossWeights(along_ray=0.0)).per_case(out, batch)
    assert float(terms["coord_across_mm"].min()) > 3.9
    with pytest.raises(InputError, match="along-ray weight"):
        ReconLossWeights(along_ray=1.5)
    with pytest.raises(KeyError, match="cam_source"):
        del batch["cam_source"]
        ReconLoss(modes, net.centre_mm, float(net.scale_mm), ReconLossWeights(along_ray=0.5)).per_case(out, batch)


def test_coupled_likelihood_weights_each_pixels_coordinate_gradient_by_one_over_sigma():
    """Known gradient on the coordinates: plain loss, w_coord / (B n_fg) x the unit error
    on every bone pixel; coupled, w_sigma / (B n_fg sigma), zero off the bone either way."""
    torch.manual_seed(0)
    net = ReconNet(tiny_config())
    batch = _batch(net)
    out = net(batch["image"])
    b = len(batch["image"])
    coords = torch.randn_like(out.coords).requires_grad_(True)
    log_sigma = torch.empty_like(out.log_sigma).uniform_(-3.0, -1.0)
    fixed = out._replace(coords=coords, log_sigma=log_sigma, mask_logit=out.mask_logit.detach(),
                         shape_sd=out.shape_sd.detach())

    class Fixed(torch.nn.Module):
        def forward(self, image):
            return fixed

    target = net.normalize(batch["canonical"].permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
    unit = (coords - target).detach()
    unit = unit / unit.norm(dim=2, keepdim=True)
    fg = batch["mask"][:, None, None]  # (B, 1, 1, H, W)
    n_fg = 2.0 * batch["mask"].sum(dim=(1, 2)).reshape(b, 1, 1, 1, 1)
    modes = torch.randn(4, 50, 3)
    grads = {}
    for coupled in (False, True):
        weights = ReconLossWeights(coupled=coupled, coord=1.0, sigma=0.1)
        loss = ReconLoss(modes, net.centre_mm, float(net.scale_mm), weights)
        coords.grad = None
        value, logs = loss(Fixed(), batch)
        value.backward()
        grads[coupled] = coords.grad.clone()
        assert "coord_mm" in logs and "sigma" in logs
    torch.testing.assert_close(grads[False], unit * fg / (b * n_fg), rtol=1e-4, atol=1e-7)
    sigma = torch.exp(log_sigma)[:, :, None]
    torch.testing.assert_close(grads[True], 0.1 * unit * fg / (b * n_fg * sigma), rtol=1e-4, atol=1e-7)
    with pytest.raises(InputError, match="sigma weight"):
        ReconLossWeights(coupled=True, sigma=0.0)


def test_dataset_items_carry_the_source_in_the_model_frame(tmp_path):
    """``cam_source`` is the point ``model_to_cam`` maps to the camera centre (0, 0, 0)."""
    from scipy.spatial.transform import Rotation

    from xrecon.methods.recon.data import ReconH5Dataset

    m2c = np.tile(np.eye(4), (2, 1, 1))
    m2c[:, :3, :3] = Rotation.random(2, random_state=0).as_matrix()
    m2c[:, :3, 3] = [[10.0, -5.0, 765.0], [-30.0, 20.0, 700.0]]
    path = tmp_path / "d.h5"
    with h5py.File(path, "w") as h5:
        h5["image"] = np.zeros((2, 8, 8), np.float32)
        h5["mask"] = np.zeros((2, 8, 8), np.uint8)
        h5["canonical"] = np.zeros((2, 2, 3, 8, 8), np.float32)
        h5["shape_sd"] = np.zeros((2, 4), np.float32)
        h5["model_to_cam"] = m2c
        h5.attrs["config"] = "{}"
    ds = ReconH5Dataset(path)
    for i in range(2):
        src = ds[i]["cam_source"].double().numpy()
        np.testing.assert_allclose(m2c[i, :3, :3] @ src + m2c[i, :3, 3], 0.0, atol=1e-3)


def test_resumed_run_keeps_the_loss_weights_it_started_with(tmp_path):
    """A run started with ``along_ray=0.5`` and zoom augmentation, resumed
    without them, goes on with both."""
    import json

    from xrecon.methods.recon.data import ReconDataConfig, generate_dataset
    from xrecon.methods.recon.train import train_recon
    from xrecon.train import TrainConfig

    cfg = ReconDataConfig(split="val", n_shapes=1, views_per_shape=2, protocol="seed002", image_size=32,
                          phantom_spacing_mm=4.0, render_spacing_mm=4.0, n_samples=32, seed=3)
    data = generate_dataset(tmp_path / "tiny.h5", cfg, progress=False)
    run = tmp_path / "run"

    def weights_used(epochs, weights, max_zoom=1.0):
        tc = TrainConfig(out_dir=run, epochs=epochs, batch_size=2, lr=1e-3, num_workers=0, num_threads=1,
                         device="cpu", progress=False)
        train_recon(data, data, tc, base_channels=4, levels=2, n_loss_vertices=20, loss_weights=weights,
                    max_zoom=max_zoom)
        info = json.loads((run / "config.json").read_text())["run_info"]
        return (info["loss_weights"]["along_ray"], info["max_zoom"],
                len(json.loads((run / "history.json").read_text())))

    assert weights_used(1, ReconLossWeights(along_ray=0.5), max_zoom=1.2) == (0.5, 1.2, 1)
    assert weights_used(2, ReconLossWeights()) == (0.5, 1.2, 2)


def test_zoomed_images_do_not_train_the_size_mode():
    """A zoom looks like a bigger or nearer bone: on zoomed cases a size (mode 1)
    error costs nothing, an error of any other mode still does."""
    torch.manual_seed(0)
    net = ReconNet(tiny_config())
    loss = ReconLoss(torch.randn(4, 50, 3) * 5, net.centre_mm, float(net.scale_mm))
    batch = _batch(net)
    out = net(batch["image"])
    coords = net.normalize(batch["canonical"].permute(0, 1, 3, 4, 2)).permute(0, 1, 4, 2, 3)
    size_off = batch["shape_sd"].clone()
    size_off[:, 0] += 1.0
    shape_off = batch["shape_sd"].clone()
    shape_off[:, 2] += 1.0
    zoom = torch.tensor([1.0, 1.1, 1.0, 1.3])
    zoomed = zoom > 1
    for wrong, free_when_zoomed in ((size_off, True), (shape_off, False)):
        terms = loss.per_case(out._replace(coords=coords, shape_sd=wrong), {**batch, "zoom": zoom})
        assert (terms["shape"][~zoomed] > 0).all() and (terms["shape_sd"][~zoomed] > 0).all()
        if free_when_zoomed:
            assert torch.allclose(terms["shape"][zoomed], torch.zeros(2), atol=1e-6)
            assert torch.allclose(terms["shape_sd"][zoomed], torch.zeros(2), atol=1e-9)
        else:
            assert (terms["shape"][zoomed] > 0).all()
        # without the field every case has its size label
        plain = loss.per_case(out._replace(coords=coords, shape_sd=wrong), batch)
        assert (plain["shape"] > 0).all()


def test_zoom_moves_the_canonical_coordinates_with_their_pixels(tmp_path):
    """Zooming a simulated view resamples its canonical coordinates and mask by
    nearest neighbour about the principal point: every zoomed pixel holds the
    values of the source pixel its ray came from."""
    from xrecon.methods.recon.data import ReconDataConfig, ReconH5Dataset, generate_dataset
    from xrecon.sim.augment import ZoomAugment, zoom_sample

    cfg = ReconDataConfig(split="val", n_shapes=1, views_per_shape=1, protocol="seed002", image_size=32,
                          phantom_spacing_mm=4.0, render_spacing_mm=4.0, n_samples=32, seed=3)
    ds = ReconH5Dataset(generate_dataset(tmp_path / "tiny.h5", cfg, progress=False))
    K = cfg.camera().K[0]
    item, zoom = ds[0], 1.25
    z = zoom_sample(item, K, zoom)
    assert float(z["zoom"]) == zoom and torch.equal(z["shape_sd"], item["shape_sd"])
    cx, cy = float(K[0, 2]), float(K[1, 2])
    v, u = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    src_u = np.clip(np.floor(cx + (u - cx) / zoom + 0.5), 0, 31).astype(int)
    src_v = np.clip(np.floor(cy + (v - cy) / zoom + 0.5), 0, 31).astype(int)
    # away from exact half-pixel ties, nearest neighbour is the rounded source pixel
    frac_u, frac_v = (cx + (u - cx) / zoom) % 1, (cy + (v - cy) / zoom) % 1
    clear = (np.abs(frac_u - 0.5) > 1e-3) & (np.abs(frac_v - 0.5) > 1e-3)
    expect = item["canonical"][:, :, src_v, src_u]
    assert torch.equal(z["canonical"][:, :, clear], expect[:, :, clear])
    assert torch.equal(z["mask"][clear], item["mask"][src_v, src_u][clear])
    assert z["mask"].sum() > item["mask"].sum()  # the bone looks bigger
    # the wrapper marks unzoomed samples with 1
    assert float(ZoomAugment(ds, K, 1.2, p=0.0)[0]["zoom"]) == 1.0
