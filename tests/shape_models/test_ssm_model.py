"""ShapeModel: PCA round trip, planted modes, save/load, bad input."""
import numpy as np
import pytest

from shape_models import FORMAT_VERSION, ShapeModel
from shape_models.procrustes import align_points, apply_transform, generalized_procrustes
from xrecon.errors import InputError, NotFittedError, ShapeError


def _rotation(rng):
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    return q * np.sign(np.linalg.det(q))


def _planted_population(n_shapes=60, n_vertices=80, seed=0, pose=True, scale=True):
    """Shapes = base + 2 planted orthonormal modes with SD 5 and 2 mm, in random frames."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n_vertices, 3)) * 30.0
    base -= base.mean(axis=0)
    modes = rng.standard_normal((2, n_vertices * 3))
    # planted modes orthogonal to each other and to the similarity tangent space
    # (translations, rotations, scale of base) so Procrustes cannot absorb them
    tangent = [np.tile(np.eye(3)[i], n_vertices) for i in range(3)]
    for i in range(3):
        w = np.zeros(3)
        w[i] = 1.0
        tangent.append(np.cross(w, base).ravel())
    tangent.append(base.ravel())
    basis = np.linalg.qr(np.stack(tangent, axis=1))[0]
    modes -= (modes @ basis) @ basis.T
    modes = np.linalg.qr(modes.T)[0].T
    sds = np.array([5.0, 2.0])
    coeffs = rng.standard_normal((n_shapes, 2))
    shapes = base[None] + ((coeffs * sds) @ modes).reshape(n_shapes, n_vertices, 3)
    if pose:
        for i in range(n_shapes):
            s = rng.uniform(0.8, 1.25) if scale else 1.0
            shapes[i] = s * shapes[i] @ _rotation(rng).T + rng.normal(0, 50, 3)
    return shapes, modes, sds


def test_umeyama_recovers_planted_similarity():
    rng = np.random.default_rng(1)
    src = rng.standard_normal((50, 3))
    R = _rotation(rng)
    dst = 1.7 * src @ R.T + np.array([3.0, -2.0, 10.0])
    m = align_points(src, dst, "similarity")
    assert np.allclose(m[:3, :3], 1.7 * R, atol=1e-10)
    assert np.allclose(apply_transform(m, src), dst, atol=1e-9)
    m_rigid = align_points(src, dst, "rigid")
    assert np.allclose(m_rigid[:3, :3] @ m_rigid[:3, :3].T, np.eye(3), atol=1e-10)


def test_round_trip_all_modes_reproduces_training_shapes():
    shapes, _, _ = _planted_population(n_shapes=12, n_vertices=40)
    shapes += np.random.default_rng(5).normal(0, 1.0, shapes.shape)  # full-rank population
    for mode in ("similarity", "rigid", None):
        model = ShapeModel(procrustes=mode).fit(shapes)
        assert model.n_components_ == len(shapes) - 1
        rec = model.reconstruct(shapes)
        assert np.abs(rec - shapes).max() < 1e-6, mode
        # scores stored at fit time give back the aligned training shapes
        aligned = apply_transform(model.training_to_model_, shapes)
        assert np.abs(model.inverse_transform(model.training_scores_) - aligned).max() < 1e-6


def test_planted_modes_come_back():
    shapes, modes, sds = _planted_population()
    model = ShapeModel(n_components=2, procrustes="similarity").fit(shapes)
    # the model frame is the Procrustes frame: rotate the modes back to the planted
    # frame, then compare directions (|cos|) and the SD ratio (Procrustes rescales)
    base_from_model = align_points(model.mean_, _planted_population(n_shapes=1, pose=False)[0][0], "rigid")
    R = base_from_model[:3, :3]
    for k in range(2):
        comp = (model.components_[k].reshape(-1, 3) @ R.T).ravel()
        assert abs(comp @ modes[k]) > 0.99
    ratio = model.std_[0] / model.std_[1]
    assert ratio == pytest.approx(sds[0] / sds[1], rel=0.25)
    assert model.explained_variance_ratio_.sum() > 0.999
    # training scores are in SD: unit variance
    assert np.allclose(model.training_scores_.std(axis=0, ddof=1), 1.0, atol=1e-6)


def test_variance_fraction_and_sample_mahalanobis():
    shapes, _, _ = _planted_population(pose=False)
    shapes += np.random.default_rng(2).normal(0, 0.05, shapes.shape)
    model = ShapeModel(n_components=0.95, procrustes=None).fit(shapes)
    assert model.n_components_ == 2
    samples = model.sample(500, seed=3)
    assert samples.shape == (500, 80, 3)
    d = model.mahalanobis(samples)
    # |b|^2 ~ chi2(2): mean 2
    assert np.mean(d**2) == pytest.approx(2.0, rel=0.15)
    b = np.array([1.0, -2.0])
    assert model.mahalanobis(b) == pytest.approx(np.sqrt(5.0))
    assert np.allclose(model.transform(model.inverse_transform(b)), b, atol=1e-8)


def test_gpa_removes_pose():
    shapes, _, _ = _planted_population(n_shapes=10)
    aligned, t, ref = generalized_procrustes(shapes, "similarity")
    assert np.allclose(apply_transform(t, shapes), aligned)
    # pose removed: aligned shapes differ only by the planted modes (SD 5 and 2 on 80 vertices)
    spread_before = np.sqrt(((shapes - shapes.mean(0)) ** 2).sum(-1).mean())
    spread_after = np.sqrt(((aligned - aligned.mean(0)) ** 2).sum(-1).mean())
    assert spread_after < 1.0 < 20 < spread_before
    # the reference sits on the plain average of the inputs (frame kept)
    assert np.allclose(ref.mean(axis=0), shapes.mean(axis=(0, 1)), atol=1e-6)


def test_save_load_round_trip_and_version(tmp_path):
    shapes, _, _ = _planted_population(n_shapes=15, n_vertices=30)
    faces = np.array([[0, 1, 2], [2, 3, 4]])
    model = ShapeModel(n_components=3).fit(shapes, faces=faces, landmarks={"tip": 5},
                                           metadata={"source": "synthetic", "split": {"train": [1, 2]}})
    path = tmp_path / "m.npz"
    model.save(path, dtype=np.float64)
    back = ShapeModel.load(path)
    assert np.allclose(back.mean_, model.mean_) and np.allclose(back.components_, model.components_)
    assert back.landmark_names_ == ["tip"] and back.landmark_vertex_ids_.tolist() == [5]
    assert back.metadata_["split"] == {"train": [1, 2]} and back.metadata_["units"] == "mm"
    assert back.procrustes == "similarity"
    assert np.array_equal(back.faces_, faces)
    assert np.allclose(back.transform(shapes), model.transform(shapes), atol=1e-8)
    # another format version is refused with a message naming the file
    data = dict(np.load(path))
    data["format_version"] = np.int64(FORMAT_VERSION + 1)
    other = tmp_path / "other.npz"
    np.savez(other, **data)
    with pytest.raises(InputError, match="format version"):
        ShapeModel.load(other)
    with pytest.raises(InputError, match="no such model file"):
        ShapeModel.load(tmp_path / "missing.npz")


def test_bad_input_gives_clear_errors():
    shapes, _, _ = _planted_population(n_shapes=5, n_vertices=20)
    with pytest.raises(InputError, match="too few shapes"):
        ShapeModel(n_components=5).fit(shapes)
    bad = shapes.copy()
    bad[2, 3, 1] = np.nan
    with pytest.raises(InputError, match="NaN"):
        ShapeModel().fit(bad)
    with pytest.raises(InputError, match="vertex counts"):
        ShapeModel().fit([shapes[0], shapes[1][:10]])
    with pytest.raises(ShapeError):
        ShapeModel().fit(shapes[..., :2])
    with pytest.raises(NotFittedError):
        ShapeModel().transform(shapes)
    model = ShapeModel().fit(shapes)
    with pytest.raises(InputError, match="vertices but the model has"):
        model.transform(shapes[:, :10])
    with pytest.raises(InputError, match="faces"):
        ShapeModel().fit(shapes, faces=np.zeros((0, 3)))
