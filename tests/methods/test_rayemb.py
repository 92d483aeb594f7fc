"""RayEmb (seed 003) on small synthetic scenes with known answers.

The oracle ray embedding is the rays' Plücker coordinates in the world frame
(:func:`xrecon.methods.rayemb.subspace.plucker_embedding`): the rays through one
point span an exact 3-dimensional subspace of it, so with it the method's
geometry can be checked without a trained network.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from xrecon.errors import InputError
from xrecon.geometry import Camera
from xrecon.methods.rayemb.loss import bilinear_target, ray_contrastive_loss, sample_embeddings
from xrecon.methods.rayemb.register import (LandmarkDetections, locate_landmarks, pose_from_detections,
                                            select_confident)
from xrecon.methods.rayemb.subspace import (plucker_embedding, projection_matrix, similarity_maps, subspace_basis,
                                            subspace_similarity)
from xrecon.methods.rayemb.templates import TemplateSet, project, template_poses

SIZE = 48


def _camera(size=SIZE) -> Camera:
    return Camera.from_detector(1020.0, 0.194 * 1536 / size, size, size)


def _plucker_map(camera: Camera, world_to_cam: np.ndarray, scale_mm: float = 20.0) -> torch.Tensor:
    """``(6, H, W)`` oracle embedding: every pixel's ray in the world frame."""
    cam = camera.with_pose(torch.as_tensor(world_to_cam)[None])
    vs, us = torch.meshgrid(torch.arange(cam.height), torch.arange(cam.width), indexing="ij")
    uv = torch.stack([us.reshape(-1), vs.reshape(-1)], -1).double()
    o, d = cam.rays_world(uv[None])
    return plucker_embedding(o[0], d[0], scale_mm).T.reshape(6, cam.height, cam.width)


def _poses(angles, centre=(0.0, 0.0, 0.0)):
    return template_poses(np.asarray(centre), angles, 765.0)


# ---------------------------------------------------------------------- subspace
def test_a_ray_through_the_point_scores_one_and_a_missing_ray_less():
    g = torch.Generator().manual_seed(0)
    X = torch.tensor([12.0, -30.0, 7.0], dtype=torch.float64)
    sources = torch.randn(9, 3, generator=g, dtype=torch.float64) * 600
    templates = plucker_embedding(sources[:4], X - sources[:4], 20.0)
    through = plucker_embedding(sources[4:], X - sources[4:], 20.0)
    miss = plucker_embedding(sources[4:], X + torch.tensor([0.0, 0.0, 8.0], dtype=torch.float64) - sources[4:], 20.0)
    s_through = subspace_similarity(through, templates, eps=1e-9)
    s_miss = subspace_similarity(miss, templates, eps=1e-9)
    assert torch.all(s_through > 1 - 1e-6)
    assert torch.all(s_miss < s_through - 1e-4)
    assert torch.all((s_miss >= 0) & (s_miss <= 1))
    # the same numbers as seed 003's formula e^T P e / |e|^2 with P = F F^+
    P = projection_matrix(templates)
    naive = ((miss @ P) * miss).sum(-1) / (miss * miss).sum(-1)
    torch.testing.assert_close(s_miss, naive, atol=1e-6, rtol=0)


def test_invalid_templates_are_ignored():
    g = torch.Generator().manual_seed(1)
    emb = torch.randn(5, 16, generator=g, dtype=torch.float64)
    query = torch.randn(7, 16, generator=g, dtype=torch.float64)
    valid = torch.tensor([True, False, True, True, False])
    got = subspace_similarity(query, emb, valid, eps=1e-10)
    want = subspace_similarity(query, emb[valid], eps=1e-10)
    torch.testing.assert_close(got, want, atol=1e-7, rtol=0)
    P = projection_matrix(emb[valid])
    torch.testing.assert_close(got, ((query @ P) * query).sum(-1) / (query * query).sum(-1), atol=1e-7, rtol=0)
    # the one-product path used on whole images gives the same numbers for several landmarks
    many = torch.randn(3, 5, 16, generator=g, dtype=torch.float64)
    masks = torch.rand(3, 5, generator=g) > 0.3
    maps = similarity_maps(query, subspace_basis(many, masks, eps=1e-10))
    torch.testing.assert_close(maps, subspace_similarity(query[None], many, masks, eps=1e-10), atol=1e-9, rtol=0)


# ---------------------------------------------------------------------- loss
def _oracle_batch(n_views=4, n_landmarks=6, seed=0):
    rng = np.random.default_rng(seed)
    cam = _camera(32)
    poses = _poses([(a, c) for a, c in zip(rng.uniform(-40, 40, n_views), rng.uniform(-10, 10, n_views))])
    X = rng.uniform(-25, 25, (n_landmarks, 3))
    uv, _ = project(poses, cam.K[0].numpy(), X)  # (V, L, 2)
    emb = torch.stack([_plucker_map(cam, p) for p in poses]).float()[None]  # (1, V, 6, H, W)
    uv_t = torch.from_numpy(uv.transpose(1, 0, 2)).float()[None]
    valid = torch.ones(1, n_landmarks, n_views, dtype=torch.bool)
    return emb, uv_t, valid


def test_the_loss_prefers_embeddings_whose_intersecting_rays_share_a_subspace():
    emb, uv, valid = _oracle_batch()
    oracle, n, err = ray_contrastive_loss(emb, uv, valid, tau=0.001, with_error=True)
    shuffled = emb[:, :, :, torch.randperm(emb.shape[3], generator=torch.Generator().manual_seed(0))]
    random, _ = ray_contrastive_loss(shuffled, uv, valid, tau=0.001)
    assert int(n) == 4 * 6
    assert float(oracle) < float(random) - 1.0
    assert float(err) < 1.0  # the oracle's arg-max lies on the true pixel


def test_the_loss_decreases_when_training_a_small_network_on_a_toy_batch():
    from xrecon.methods.rayemb.loss import RayEmbLoss
    from xrecon.methods.rayemb.network import RayEmbNet, RayEmbNetConfig

    torch.manual_seed(0)
    _, uv, valid = _oracle_batch(n_views=4, n_landmarks=8, seed=3)
    g = torch.Generator().manual_seed(0)
    images = torch.nn.functional.avg_pool2d(torch.rand(1, 4, 1, 32, 32, generator=g).flatten(0, 1), 5, 1, 2)
    batch = {"image": images.view(1, 4, 1, 32, 32), "uv": uv, "valid": valid.float()}
    net = RayEmbNet(RayEmbNetConfig(embed_dim=8, base_channels=4, levels=2, input_stride=1, image_size=32))
    loss_fn = RayEmbLoss(tau=0.05)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    first = float(loss_fn(net, batch)[0].detach())
    for _ in range(40):
        loss, _ = loss_fn(net, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    last = float(loss_fn(net, batch)[0].detach())
    assert last < first - 0.5, (first, last)


def test_bilinear_target_and_sampling_agree_on_pixel_centres():
    uv = torch.tensor([[3.25, 5.5], [0.0, 0.0]])
    t = bilinear_target(uv, 8, 10)
    torch.testing.assert_close(t.sum(1), torch.ones(2))
    assert abs(float(t[0, 5 * 10 + 3]) - 0.75 * 0.5) < 1e-6 and abs(float(t[0, 6 * 10 + 4]) - 0.25 * 0.5) < 1e-6
    assert float(t[1, 0]) == 1.0
    ramp = torch.arange(10.0)[None, None, None].expand(1, 1, 8, 10)  # value = column
    torch.testing.assert_close(sample_embeddings(ramp, uv[None])[0, :, 0], torch.tensor([3.25, 0.0]))


# ---------------------------------------------------------------------- inference
def _oracle_templates(cam, landmarks, angles):
    poses = _poses(angles)
    uv, depth = project(poses, cam.K[0].numpy(), landmarks)
    maps = torch.stack([_plucker_map(cam, p) for p in poses])  # (T, 6, H, W)
    rays = sample_embeddings(maps, torch.from_numpy(uv))  # (T, L, 6)
    valid = torch.from_numpy((uv >= 1).all(-1) & (uv <= cam.width - 2).all(-1) & (depth > 0))
    return TemplateSet(landmarks, rays.transpose(0, 1), valid.T, uv.transpose(1, 0, 2), poses, cam.K[0].numpy(),
                       cam.height, cam.width)


def test_an_oracle_embedding_finds_planted_landmarks_and_pnp_recovers_the_pose():
    from xrecon.geometry import se3

    rng = np.random.default_rng(4)
    cam = _camera()
    landmarks = rng.uniform(-60, 60, (24, 3))
    tpl = _oracle_templates(cam, landmarks, [(-40, 0), (-20, 0), (0, 0), (20, 0), (40, 0), (0, 15)])
    truth = _poses([(13.0, -6.0)], centre=(8.0, -5.0, 12.0))[0]
    query = _plucker_map(cam, truth).double()
    uv, score, maps = locate_landmarks(query, tpl, eps=1e-10, return_maps=True)
    true_uv, _ = project(truth[None], cam.K[0].numpy(), landmarks)
    inside = (true_uv[0] >= 1).all(1) & (true_uv[0] <= SIZE - 2).all(1)
    assert inside.sum() >= 12
    err = np.linalg.norm(uv - true_uv[0], axis=1)[inside]
    assert np.median(err) < 0.3 and err.max() < 0.8, err
    assert maps.shape == (24, SIZE, SIZE)
    # the peak (at a whole pixel, within half a pixel of the ray) stands above the rest of the map
    typical = maps.reshape(24, -1).median(dim=1).values.numpy()
    assert np.all(score[inside] > 0.995) and np.all(score[inside] > typical[inside] + 0.02)
    # PnP on the found landmarks gives back the planted pose
    confident = select_confident(np.where(inside, score, np.nan), 0.99, 100)
    assert confident.sum() == inside.sum()
    res = pose_from_detections(LandmarkDetections(landmarks, uv, score, confident), tpl.K, reproj_threshold_px=2.0)
    assert res.success
    rot, _ = se3.pose_errors(torch.as_tensor(res.world_to_cam)[None], torch.as_tensor(truth)[None])
    # at 48 px (4.6 mm per pixel at the isocentre) a 0.3 px error leaves the depth (camera z)
    # least certain: across the beam the centre must be within 2 mm, along it within 3 %
    centre = landmarks.mean(0)
    est = res.world_to_cam[:3, :3] @ centre + res.world_to_cam[:3, 3]
    true = truth[:3, :3] @ centre + truth[:3, 3]
    assert float(rot) < 0.5 and np.abs(est - true)[:2].max() < 2.0 and abs(est[2] - true[2]) < 0.03 * true[2], (
        float(rot), est - true)


def test_a_planted_landmark_among_decoys_is_found_where_it_projects():
    """A single landmark whose template rays exist only in two views still gets its
    own pixel, and a landmark seen in fewer templates than asked is not searched."""
    cam = _camera()
    landmarks = np.array([[5.0, 3.0, -4.0], [400.0, 0.0, 0.0]])  # the second lies outside every template
    tpl = _oracle_templates(cam, landmarks, [(-30, 0), (30, 0)])
    truth = _poses([(0.0, 0.0)])[0]
    uv, score = locate_landmarks(_plucker_map(cam, truth).double(), tpl, eps=1e-10)
    want, _ = project(truth[None], cam.K[0].numpy(), landmarks[:1])
    assert np.linalg.norm(uv[0] - want[0, 0]) < 0.5
    assert np.isnan(score[1]) and np.isnan(uv[1]).all()


def test_select_confident_keeps_the_best_above_the_threshold():
    s = np.array([0.9, np.nan, 0.2, 0.95, 0.7, 0.99])
    assert select_confident(s, 0.5, 10).tolist() == [True, False, False, True, True, True]
    assert select_confident(s, 0.5, 2).tolist() == [False, False, False, True, False, True]


# ---------------------------------------------------------------------- landmarks, templates, data
def _ball_ct(radius_mm=20.0, spacing=2.0, n=32):
    from xrecon.anatomy.volume import Volume

    idx = np.indices((n, n, n)).reshape(3, -1).T
    A = np.diag([spacing, spacing, spacing, 1.0])
    A[:3, 3] = -spacing * (n - 1) / 2
    xyz = idx * spacing + A[:3, 3]
    body = np.linalg.norm(xyz, axis=1) < 28
    bone = np.linalg.norm(xyz - [4.0, 0.0, 0.0], axis=1) < radius_mm * 0.5
    hu = np.where(bone, 700.0, np.where(body, 40.0, -1000.0)).reshape(n, n, n).astype(np.float32)
    return Volume(hu, A, "ball")


def test_ct_landmarks_lie_on_inside_and_around_the_bone():
    from xrecon.methods.rayemb.landmarks import sample_ct_landmarks

    ct = _ball_ct()
    pts = sample_ct_landmarks(ct, 100, mix=(0.5, 0.4, 0.1), seed=1)
    assert pts.shape == (100, 3)
    r = np.linalg.norm(pts - [4.0, 0.0, 0.0], axis=1)
    assert np.all(r[:50] < 10 + 2.0) and np.all(r[:50] > 10 - 4.5)  # boundary voxels (2 mm grid, jittered)
    assert np.all(r[50:90] < 10 - 0.5)  # interior voxels
    assert np.all(np.abs(pts[90:] - [4.0, 0.0, 0.0]).max(1) < 10 + 15 + 2)  # the box grown by 15 mm
    assert not np.allclose(pts, sample_ct_landmarks(ct, 100, mix=(0.5, 0.4, 0.1), seed=2))
    with pytest.raises(InputError, match="above 5000 HU"):
        sample_ct_landmarks(ct, 10, hu_threshold=5000)


def test_mesh_candidates_mix_surface_interior_and_box_points():
    import open3d as o3d

    from xrecon.methods.rayemb.landmarks import mesh_landmark_candidates

    mesh = o3d.geometry.TriangleMesh.create_sphere(radius=30.0, resolution=30)
    v, f = np.asarray(mesh.vertices), np.asarray(mesh.triangles)
    pts = mesh_landmark_candidates(v, f, 400, np.random.default_rng(0), mix=(0.5, 0.5, 0.0))
    r = np.linalg.norm(pts, axis=1)
    on = np.abs(r - 30) < 0.5
    assert 150 < on.sum() < 260 and np.all(r < 30.5) and (r < 29).sum() > 150


def test_templates_are_rendered_read_at_the_projections_and_cached(tmp_path, monkeypatch):
    from xrecon.methods.rayemb.templates import build_templates, template_cache_key

    monkeypatch.setenv("XRECON_CACHE_DIR", str(tmp_path))
    ct = _ball_ct()
    cam = _camera(32)
    landmarks = np.array([[4.0, 0.0, 0.0], [0.0, 5.0, 3.0], [0.0, 0.0, 600.0]])
    poses = template_poses(np.array([4.0, 0.0, 0.0]), [(-30, 0), (0, 0), (30, 0)], 765.0)
    seen = []

    def embed(images):  # an "embedding" that is the DRR itself and the pixel's column
        seen.append(images)
        cols = torch.arange(32.0)[None, None, None].expand(len(images), 1, 32, 32)
        return torch.cat([images, cols], dim=1)

    key = template_cache_key(ct, cam, landmarks, poses, "net-a", n_samples=64)
    tpl = build_templates(ct, cam, landmarks, embed, poses, n_samples=64, cache_key=key)
    assert len(seen) == 1 and seen[0].shape == (3, 1, 32, 32) and float(seen[0].amax()) > 0  # DRRs of the ball
    uv, _ = project(poses, cam.K[0].numpy(), landmarks)
    np.testing.assert_allclose(tpl.embeddings[:2, :, 1].numpy(), uv[:, :2, 0].T, atol=1e-4)
    assert tpl.valid[:2].all() and not tpl.valid[2].any()  # the third lies far above the field of view
    assert not tpl.from_cache
    again = build_templates(ct, cam, landmarks, embed, poses, n_samples=64, cache_key=key)
    assert again.from_cache and len(seen) == 1
    torch.testing.assert_close(again.embeddings, tpl.embeddings)
    assert template_cache_key(ct, cam, landmarks, poses, "net-b", n_samples=64) != key


def _fake_dataset(path, n_shapes=2, views=4, size=32):
    """A reconstruction-format file with the fields RayEmb reads (shapes given explicitly)."""
    import h5py

    from shape_models.bundled import load_model
    from xrecon.methods.recon.data import model_to_world
    from xrecon.methods.recon.shape import ShapeSpace

    space = ShapeSpace.from_shape_model(load_model("pelvis"))
    rng = np.random.default_rng(0)
    poses = np.concatenate([_poses([(a, 0.0) for a in rng.uniform(-40, 40, views)]) for _ in range(n_shapes)])
    cam = _camera(size)
    with h5py.File(path, "w") as h5:
        h5["image"] = rng.random((n_shapes * views, size, size)).astype(np.float32)
        h5["world_to_cam"] = poses
        h5["K"] = np.repeat(cam.K[0].numpy()[None], len(poses), 0)
        h5["shape_index"] = np.repeat(np.arange(n_shapes), views).astype(np.int32)
        h5["shape_sd"] = np.zeros((len(poses), space.n_modes), np.float32)
        h5["shapes"] = np.stack([space.mean_vertices * (1 + 0.05 * s) for s in range(n_shapes)]).astype(np.float32)
        h5.attrs["model_to_world"] = model_to_world(space)
        h5.attrs["config"] = json.dumps({"shape_model": "pelvis", "image_size": size})
    return poses, cam


def test_dataset_items_hold_a_subjects_views_and_its_landmarks_projections(tmp_path):
    from xrecon.methods.rayemb.data import RayEmbDataset

    poses, cam = _fake_dataset(tmp_path / "train.h5")
    ds = RayEmbDataset(tmp_path / "train.h5", views=3, landmarks=10, n_candidates=64)
    assert len(ds) == 2
    torch.manual_seed(0)
    item = ds[1]
    assert item["image"].shape == (3, 1, 32, 32) and item["uv"].shape == (10, 3, 2) and item["valid"].shape == (10, 3)
    # the pixels are the projections of the landmarks in views of subject 1 (rows 4..7)
    rows = [next(r for r in range(4, 8) if torch.equal(item["image"][k, 0], ds.image[r])) for k in range(3)]
    assert len(set(rows)) == 3
    uv, _ = project(poses[rows], cam.K[0].numpy(), item["landmarks"].double().numpy())
    np.testing.assert_allclose(item["uv"].numpy(), uv.transpose(1, 0, 2), atol=1e-2)
    # landmarks lie on, in or around subject 1's bone
    verts = ds.vertices_world(1, 4)
    lo, hi = verts.min(0) - 16, verts.max(0) + 16
    assert np.all((item["landmarks"].numpy() >= lo) & (item["landmarks"].numpy() <= hi))
    fixed = RayEmbDataset(tmp_path / "train.h5", views=3, landmarks=10, deterministic=True, n_candidates=64)
    torch.testing.assert_close(fixed[0]["uv"], fixed[0]["uv"])
    torch.testing.assert_close(fixed[0]["landmarks"],
                               RayEmbDataset(tmp_path / "train.h5", views=3, landmarks=10, deterministic=True,
                                             n_candidates=64)[0]["landmarks"])
    with pytest.raises(InputError, match="no subject with 5 views"):
        RayEmbDataset(tmp_path / "train.h5", views=5)


# ---------------------------------------------------------------------- model files, training
def test_weights_round_trip_and_a_tampered_file_is_refused(tmp_path):
    from xrecon.methods.rayemb.model_io import FORMAT, load_rayemb_model, save_rayemb_model
    from xrecon.methods.rayemb.network import RayEmbNet, RayEmbNetConfig

    torch.manual_seed(0)
    net = RayEmbNet(RayEmbNetConfig(embed_dim=8, base_channels=4, levels=2, image_size=32)).eval()
    save_rayemb_model(tmp_path / "m.pt", net, {"command": "test"})
    back, info = load_rayemb_model(tmp_path / "m.pt")
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), net(x))
    assert info["command"] == "test" and json.loads((tmp_path / "m.json").read_text())["format"] == FORMAT

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    torch.save({"format": FORMAT, "net_config": net.config.to_dict(), "state_dict": net.state_dict(),
                "info": {"x": Payload()}}, tmp_path / "evil.pt")
    with pytest.raises(InputError, match="refused"):
        load_rayemb_model(tmp_path / "evil.pt")
    assert not (tmp_path / "ran").exists()
    torch.save({"format": "xrecon-recon-model-v1"}, tmp_path / "other.pt")
    with pytest.raises(InputError, match="not an xrecon RayEmb model"):
        load_rayemb_model(tmp_path / "other.pt")
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    state["net_config"]["embed_dim"] = 16
    torch.save(state, tmp_path / "wrong.pt")
    with pytest.raises(InputError, match="do not fit"):
        load_rayemb_model(tmp_path / "wrong.pt")


def test_train_rayemb_runs_the_shared_loop_and_writes_a_loadable_model(tmp_path):
    from xrecon.methods.rayemb.model_io import load_rayemb_model
    from xrecon.methods.rayemb.network import RayEmbNetConfig
    from xrecon.methods.rayemb.train import train_rayemb
    from xrecon.train import TrainConfig

    _fake_dataset(tmp_path / "train.h5", n_shapes=2, views=4)
    _fake_dataset(tmp_path / "val.h5", n_shapes=1, views=4)
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), epochs=1, batch_size=2, progress=False,
                      monitor="argmax_error_px", warmup_steps=1)
    path = train_rayemb([tmp_path / "train.h5"], tmp_path / "val.h5", cfg, views=3, val_views=3, landmarks=6,
                        net_config=RayEmbNetConfig(embed_dim=8, base_channels=4, levels=2, image_size=32))
    net, info = load_rayemb_model(path)
    assert net.config.embed_dim == 8 and info["epochs_run"] == 1
    assert np.isfinite(info["best_val_metrics"]["argmax_error_px"])


def test_the_registrar_maps_found_pixels_back_to_the_input_image_and_keeps_its_templates(tmp_path, monkeypatch):
    """A smoke run of the whole inference on a small CT with an untrained network:
    it must run, report pixels in the input image's grid (64 px for a 32 px network)
    and build the templates once."""
    from xrecon.methods.rayemb.network import RayEmbNet, RayEmbNetConfig
    from xrecon.methods.rayemb.register import RayEmbConfig, RayEmbRegistrar
    from xrecon.methods.rayemb.templates import render_templates

    monkeypatch.setenv("XRECON_CACHE_DIR", str(tmp_path))
    torch.manual_seed(0)
    net = RayEmbNet(RayEmbNetConfig(embed_dim=8, base_channels=4, levels=2, image_size=32)).eval()
    ct = _ball_ct()
    cfg = RayEmbConfig(n_landmarks=12, max_landmarks=12, min_score=0.0, n_samples=48,
                       template_angles_deg=((-20.0, 0.0), (0.0, 0.0), (20.0, 0.0)))
    reg = RayEmbRegistrar(net, ct, config=cfg)
    cam = _camera(64)
    pose = template_poses(reg.centre_ct, [(10.0, 5.0)], 765.0)
    image = render_templates(ct, cam, pose, n_samples=48)[0].numpy()
    res = reg.register(image, cam)
    assert res.detections.uv.shape == (12, 2) and res.detections.score.shape == (12,)
    searched = np.isfinite(res.detections.score)
    assert searched.any()
    assert np.all((res.detections.uv[searched] > -1) & (res.detections.uv[searched] < 64))
    assert res.n_confident == int(res.detections.confident.sum())
    assert res.success or res.reason
    built = reg._templates.copy()
    reg.register(image, cam)
    assert reg._templates.keys() == built.keys() and all(reg._templates[k] is built[k] for k in built)


def test_the_train_command_is_wired_and_checks_its_options(tmp_path, capsys):
    from xrecon.cli.main import run

    with pytest.raises(SystemExit) as info:
        run(["train", "rayemb", "--out", str(tmp_path / "o"), "--embed-dim", "2"])
    assert info.value.code == 2
    assert "embed-dim" in capsys.readouterr().err


def test_the_shipped_weights_load_through_the_safe_loader():
    from xrecon.methods.rayemb.model_io import DEFAULT_MODEL, load_rayemb_model

    net, info = load_rayemb_model()
    sidecar = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())
    assert net.config.image_size == 128 and "xrecon train rayemb" in sidecar["command"]
    with torch.no_grad():
        assert net(torch.rand(1, 1, 128, 128)).shape == (1, net.config.embed_dim, 128, 128)
