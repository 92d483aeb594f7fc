"""Bundled populations: the ready models, the subject split, mode 1, LLP26."""
import numpy as np
import pytest

from shape_models import bundled
from xrecon.errors import InputError


@pytest.fixture(scope="module")
def pelvis():
    return bundled.load_model("pelvis")


def test_ready_pelvis_model_and_split(pelvis):
    split = pelvis.metadata_["split"]
    ids = split["train"] + split["val"] + split["test"]
    assert len(ids) == len(set(ids)) == 324
    assert len(split["test"]) == 32 and len(split["train"]) == 260
    assert pelvis.metadata_["n_training_shapes"] == len(split["train"])
    expected = bundled.subject_split(324)  # the documented rule gives the stored split
    assert all(split[k] == expected[k] for k in ("train", "val", "test"))
    assert pelvis.faces_.shape == (18732, 3) and pelvis.n_vertices_ == 9366
    # anatomical frame: ASIS left at -z, right at +z, PSIS posterior (-x)
    lm = pelvis.landmarks(pelvis.mean_)
    names = pelvis.landmark_names_
    asis_l, asis_r = lm[names.index("ASIS_left")], lm[names.index("ASIS_right")]
    psis_l = lm[names.index("PSIS_left")]
    assert asis_l[2] < -60 and asis_r[2] > 60 and psis_l[0] < asis_l[0] - 60
    assert np.linalg.norm((asis_l + asis_r) / 2) < 10  # origin midway between the ASIS


def test_test_subjects_rebuild_from_the_coupled_model(pelvis):
    shapes, ids = bundled.subject_shapes(pelvis, "test")
    direct, faces, _ = bundled.coupled_instances("left", ("Pel_L", "Pel_R"), ids[:3])
    aligned, _ = pelvis.align(direct)
    # 10 modes of the rigidly aligned train subjects represent held-out subjects to < 0.2 mm
    assert np.abs(shapes[:3] - aligned).max() < 0.2
    assert np.abs(aligned - direct).max() < 10  # the frame is kept (pose variation is small)
    assert np.array_equal(faces, pelvis.faces_)


def test_mode1_is_isotropic_size():
    report = bundled.mode1_report("left")
    assert report["variance_share"] > 0.9
    for bone, r in report["bones"].items():
        assert 1.15 < r["size_ratio"] < 1.25, bone
        assert r["cos_scale"] > 0.95, bone
        assert r["rms_after_similarity_mm"] < 0.15 * r["rms_displacement_mm"], bone


def test_llp26_femur_round_trip():
    model = bundled.load_llp26("femur")
    assert model.n_vertices_ == 634 and model.faces_ is None
    assert model.n_components_ == 25  # 26 subjects, all modes
    full = bundled.load_llp26()
    subjects = full.inverse_transform(full.training_scores_)[:, 1946:2580]
    assert np.abs(model.inverse_transform(model.training_scores_) - subjects).max() < 1e-6
    with pytest.raises(InputError, match="unknown LLP26 bone"):
        bundled.load_llp26("skull")


def test_unknown_names_are_refused():
    with pytest.raises(InputError, match="unknown bundled model"):
        bundled.load_model("skull")
    with pytest.raises(InputError, match="unknown bone"):
        bundled.coupled_instances("left", ("Fem_R",))
