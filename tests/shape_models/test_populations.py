"""Open-world populations: smooth deformations, out-of-span draws, mirroring, LLP26 surfaces, splits."""
import numpy as np
import pytest

from shape_models import bundled, populations as P
from xrecon.errors import InputError


@pytest.fixture(scope="module")
def pelvis():
    return bundled.load_model("pelvis")


def grid_mesh(n=41, size_mm=80.0):
    """A flat square grid ``(n*n, 3)`` with its triangles (edge ``size / (n - 1)``)."""
    t = np.linspace(0, size_mm, n)
    x, y = np.meshgrid(t, t, indexing="ij")
    v = np.c_[x.ravel(), y.ravel(), np.zeros(n * n)]
    idx = np.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1].ravel(), idx[1:, :-1].ravel(), idx[1:, 1:].ravel(), idx[:-1, 1:].ravel()
    return v, np.r_[np.c_[a, b, c], np.c_[a, c, d]]


def box_with_notch():
    """A closed, outward-wound, left/right-asymmetric mesh: a unit-ish box with one corner moved."""
    v = np.array([[0, 0, 0], [4, 0, 0], [4, 3, 0], [0, 3, 0], [0, 0, 2], [4, 0, 2], [4, 3, 2], [0, 3, 5]], float)
    f = np.array([[0, 2, 1], [0, 3, 2], [4, 5, 6], [4, 6, 7], [0, 1, 5], [0, 5, 4],
                  [1, 2, 6], [1, 6, 5], [2, 3, 7], [2, 7, 6], [3, 0, 4], [3, 4, 7]])
    return v + [1.0, -2.0, 3.0], f


# ---------------------------------------------------------------------------- (b) deformation field
def test_deformation_rms_equals_amplitude():
    v, _ = grid_mesh()
    for amp in (0.5, 2.0):
        d = P.smooth_deformation(v, np.random.default_rng(3), amp, 20.0)
        assert d.shape == v.shape
        assert abs(np.sqrt((d**2).sum(1).mean()) - amp) < 0.1 * amp


def test_unnormalised_field_has_the_kernel_covariance():
    """Naive reference: across many draws, the covariance of one component at two points
    distance r apart is (A^2 / 3) exp(-r^2 / (2 l^2)) (squared-exponential GP)."""
    amp, ell = 3.0, 10.0
    pts = np.array([[0.0, 0, 0], [10.0, 0, 0], [25.0, 0, 0]])
    rng = np.random.default_rng(0)
    d = np.stack([P.smooth_deformation(pts, rng, amp, ell, normalise=False) for _ in range(3000)])  # (N, 3, 3)
    var = (d[:, 0] ** 2).mean()
    assert abs(var - amp**2 / 3) < 0.1 * amp**2 / 3
    for k, r in ((1, 10.0), (2, 25.0)):
        cov = (d[:, 0] * d[:, k]).mean()
        assert abs(cov - amp**2 / 3 * np.exp(-r**2 / (2 * ell**2))) < 0.06 * amp**2 / 3


def test_deformation_is_smooth_at_long_length_scales():
    v, f = grid_mesh()  # edges of 2 mm
    edges = np.r_[f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]
    smooth = P.smooth_deformation(v, np.random.default_rng(1), 1.0, 30.0)
    rough = P.smooth_deformation(v, np.random.default_rng(1), 1.0, 1.0)
    diff = lambda d: np.linalg.norm(d[edges[:, 0]] - d[edges[:, 1]], axis=1)  # noqa: E731
    assert diff(smooth).max() < 0.25  # << 1 mm amplitude
    assert np.median(diff(rough)) > 0.5  # the length scale is honoured: 1 mm fields are rough at 2 mm


def test_deformation_deterministic_from_seed_and_validated():
    v, _ = grid_mesh(11)
    a = P.smooth_deformation(v, np.random.default_rng(7), 1.0, 20.0)
    b = P.smooth_deformation(v, np.random.default_rng(7), 1.0, 20.0)
    c = P.smooth_deformation(v, np.random.default_rng(8), 1.0, 20.0)
    assert np.array_equal(a, b) and not np.allclose(a, c)
    with pytest.raises(InputError):
        P.smooth_deformation(v, np.random.default_rng(0), 1.0, 0.0)
    with pytest.raises(InputError):
        P.smooth_deformation(v, np.random.default_rng(0), -1.0, 10.0)


# ---------------------------------------------------------------------------- out-of-span draws
def test_population_draws_are_deterministic_and_split_by_seed(pelvis):
    pop = P.OutOfSpanPopulation(amplitude_mm=2.0, length_scale_mm=20.0)
    a = pop.draw(pelvis, "test", 3)
    b = pop.draw(pelvis, "test", 3)
    assert np.array_equal(a.vertices, b.vertices) and a.seed == P.SEED_OFFSETS["test"] + 3
    assert not np.allclose(pop.draw(pelvis, "val", 3).vertices, a.vertices)
    test_subjects = set(pelvis.metadata_["split"]["test"])
    assert all(int(pop.draw(pelvis, "test", i).base.split()[-1]) in test_subjects for i in range(5))
    ranges = P.population_split("out-of-span")
    spans = sorted(ranges.values())
    assert all(spans[k][1] <= spans[k + 1][0] for k in range(len(spans) - 1))  # disjoint seed ranges
    assert abs(a.displacement_rms_mm - 2.0) < 1e-9


def test_deformed_draws_leave_the_span_undeformed_do_not(pelvis):
    flat = P.OutOfSpanPopulation(amplitude_mm=0.0)
    deformed = P.OutOfSpanPopulation(amplitude_mm=2.0, length_scale_mm=20.0)
    sample = P.OutOfSpanPopulation(amplitude_mm=0.0, base="sample")
    r0 = P.span_residual(pelvis, np.stack([flat.draw(pelvis, "test", i).vertices for i in range(2)]
                                          + [sample.draw(pelvis, "train", 0).vertices]))
    r1 = P.span_residual(pelvis, np.stack([deformed.draw(pelvis, "test", i).vertices for i in range(2)]))
    assert r0.rms_mm.max() < 0.1 and r0.surface_mm.max() < 0.1
    assert r1.rms_mm.min() > 0.8 and r1.surface_mm.min() > 0.3


def test_span_residual_sees_through_a_rigid_motion(pelvis):
    x = pelvis.inverse_transform(np.r_[1.0, -0.5, np.zeros(8)])
    c, s = np.cos(0.4), np.sin(0.4)
    moved = x @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + [30.0, -5.0, 100.0]
    r = P.span_residual(pelvis, moved)
    assert r.rms_mm[0] < 1e-6
    assert np.allclose(r.coefficients[0], np.r_[1.0, -0.5, np.zeros(8)], atol=1e-6)


# ---------------------------------------------------------------------------- (c) mirroring
def test_mirror_keeps_volume_and_outward_normals():
    v, f = box_with_notch()
    vol = P.signed_volume(v, f)
    assert vol > 0
    mv, mf = P.mirror_mesh(v, f)
    assert np.allclose(mv[:, 2], -v[:, 2]) and np.allclose(mv[:, :2], v[:, :2])
    assert abs(P.signed_volume(mv, mf) - vol) < 1e-9  # same volume, still outward
    assert P.signed_volume(mv, f) < 0  # without re-winding the normals would point inward
    # outward per face: this mesh is star-shaped about its centroid
    tri = mv[mf]
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert ((n * (tri.mean(1) - mv.mean(0))).sum(1) > 0).all()
    back = P.mirror_mesh(mv, mf)
    assert np.allclose(back[0], v) and np.array_equal(back[1], f)
    assert not np.allclose(np.sort(mv, 0), np.sort(v, 0))  # an asymmetric mesh really changes


def test_mirrored_pelvis_stays_in_correspondence(pelvis):
    perm = P.pelvis_mirror_permutation(pelvis)
    x = P.OutOfSpanPopulation(amplitude_mm=0.0).draw(pelvis, "test", 0).vertices
    m = P.mirror_in_correspondence(x, perm)
    assert abs(P.signed_volume(m, pelvis.faces_) - P.signed_volume(x, pelvis.faces_)) < 1e-6 * P.signed_volume(
        x, pelvis.faces_)
    assert P.signed_volume(m, pelvis.faces_) > 0
    names = pelvis.landmark_names_
    lm, lm_m = pelvis.landmarks(x), pelvis.landmarks(m)
    ref = lm[names.index("ASIS_right")] * [1, 1, -1]
    assert np.allclose(lm_m[names.index("ASIS_left")], ref)  # the left ASIS is the mirrored right one
    assert np.allclose(P.mirror_in_correspondence(m, perm), x)
    with pytest.raises(InputError):
        P.pelvis_mirror_permutation(bundled.load_model("femur"))


# ---------------------------------------------------------------------------- (a) LLP26
def _check_closed(v, f):
    """Every edge shared by exactly two faces, running opposite ways (closed, consistently wound)."""
    directed = np.r_[f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]
    fwd = set(map(tuple, directed.tolist()))
    assert len(fwd) == len(directed)  # no directed edge twice
    assert all((b, a) in fwd for a, b in fwd)


def test_llp26_nodes_elements_and_surfaces():
    nodes = P.llp26_pelvis_nodes()
    assert nodes.shape == (26, 1946, 3)
    types, ids = P.llp26_pelvis_elements()
    assert len(types) == 260 and ids.shape == (260, 16)
    for part, r in P.LLP26_PELVIS_PARTS.items():  # parts own disjoint node ranges
        used = np.unique(ids[slice(*r["elements"])])
        used = used[used >= 0]
        assert used.min() == r["nodes"][0] and used.max() == r["nodes"][1] - 1 and len(used) == np.diff(r["nodes"])[0]
    v3, f3 = P.llp26_pelvis_surface(nodes[0], ("right_hip",), subdivisions=3)
    assert np.allclose(np.sort(v3, 0), np.sort(nodes[0, :540], 0))  # the surface passes through the nodes
    v, f = P.llp26_pelvis_surface(nodes[5])
    _check_closed(v, f)
    vols = [P.signed_volume(*P.llp26_pelvis_surface(nodes[5], (p,))) for p in ("right_hip", "left_hip")]
    assert all(1e5 < x < 8e5 for x in vols)  # positive (outward), hip-bone sized (mm^3)
    assert abs(P.signed_volume(v, f) - sum(vols)) < 1e-6 * sum(vols)
    # sides: +x is the subject's left in the LLP26 frame
    assert nodes[:, 540:1080, 0].mean() > nodes[:, :540, 0].mean()


def test_population_splits():
    s = P.population_split("llp26")
    assert s["train"] == [] and len(s["val"]) == 6 and len(s["test"]) == 20
    assert sorted(s["val"] + s["test"]) == list(range(26))
    assert s == P.population_split("llp26")
    a = P.population_split("articulated-ssm")
    assert len(a["test"]) == 32
    with pytest.raises(InputError):
        P.population_split("nope")
