"""Film-like scenes (xrecon.anatomy.scene): the pelvis labels stay those of the bone-only
phantom, the femoral heads sit in the acetabula, the body holds every bone and the gas,
draws come from the seed, and the default recon data still uses the bone-only phantom."""
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from xrecon.anatomy.bone import BoneModel
from xrecon.anatomy.phantom import ct_from_mesh
from xrecon.anatomy.scene import FilmSceneConfig, SceneParts, film_scene, fit_sphere, place_neighbours
from xrecon.errors import InputError


@pytest.fixture(scope="module")
def world():
    from shape_models.neighbours import pelvis_neighbours
    from xrecon.methods.recon.data import model_to_world
    from xrecon.methods.recon.shape import ShapeSpace

    space = ShapeSpace.bundled("pelvis")
    T = model_to_world(space)
    parts = SceneParts(**pelvis_neighbours("pelvis")).transformed(T)
    verts = space.instance(np.array([0.8, -1.0, 0.5])) @ T[:3, :3].T + T[:3, 3]
    return space, T, parts, BoneModel(verts, space.faces, frame="patient (RAS+ mm)", source="instance")


@pytest.fixture(scope="module")
def scene(world):
    return film_scene(world[3], world[2], spacing_mm=3.0, seed=4)


def test_pelvis_labels_are_the_bone_only_phantoms(world, scene):
    ct, labels = scene
    _, ref = ct_from_mesh(world[3], spacing_mm=3.0, seed=4)
    off = (ref.voxel_to_world[:3, 3] - labels.voxel_to_world[:3, 3]) / 3.0
    np.testing.assert_allclose(off, np.round(off), atol=1e-9)  # the same voxel centres
    box = tuple(slice(int(o), int(o) + n) for o, n in zip(np.round(off), ref.shape))
    np.testing.assert_array_equal(labels.data[box] == 1, ref.data == 1)
    assert (labels.data == 1).sum() == (ref.data == 1).sum() > 0  # no pelvis label outside the old grid
    assert labels.label_names[1] == "bone"
    for k in (2, 3, 4, 5, 8):  # femora, sacrum, lumbar stand-in, body are all there
        assert (labels.data == k).sum() > 100, labels.label_names[k]
    assert ct.shape[2] * 3.0 > ref.shape[2] * 3.0 + 200  # reaches well beyond the pelvis


def test_femoral_heads_sit_in_the_acetabula(world):
    _, _, parts, bone = world
    cfg = FilmSceneConfig()
    placed = place_neighbours(bone.vertices, parts, np.random.default_rng(0), cfg)
    for side in ("left", "right"):
        v, _ = placed.femora[side]
        head, r_head = fit_sphere(v[placed.femoral_head_ids[side]])
        cup, r_cup = fit_sphere(bone.vertices[parts.acetabulum_ids[side]])
        assert np.linalg.norm(head - cup) < 1.0
        assert 0.6 * r_cup < r_head < r_cup  # a joint space, not an overlap
        gap, _ = cKDTree(v).query(bone.vertices[parts.acetabulum_ids[side]])
        assert 1.0 < np.median(gap) < 8.0
        assert v[:, 2].min() < head[2] - 200.0  # the shaft runs down from the hip
        flex, abd, rot = placed.angles_deg[side]
        assert cfg.flexion_deg[0] <= flex <= cfg.flexion_deg[1] and cfg.abduction_deg[0] <= abd <= cfg.abduction_deg[1]
    assert placed.hip_centres["left"][0] < 0 < placed.hip_centres["right"][0]  # RAS: +x is the right


def test_the_body_encloses_every_bone_and_the_gas(scene):
    ct, labels = scene
    lab = labels.data
    bone = np.isin(lab, [1, 2, 3, 4, 5])
    near = ndimage.binary_dilation(bone, np.ones((9, 9, 1), bool))  # 12 mm around, in each axial slice
    assert (lab[near] != 0).all()
    gas = lab == 7
    assert gas.sum() > 20
    assert (lab[ndimage.binary_dilation(gas, np.ones((5, 5, 5), bool))] != 0).all()
    assert np.median(ct.data[gas]) < -850.0
    assert ct.data[lab == 0].mean() < -950.0  # outside the body is air


def test_same_seed_same_scene_other_seed_other_scene(world):
    _, _, parts, bone = world
    a = film_scene(bone, parts, spacing_mm=5.0, seed=9)
    b = film_scene(bone, parts, spacing_mm=5.0, seed=9)
    c = film_scene(bone, parts, spacing_mm=5.0, seed=10)
    np.testing.assert_array_equal(a[0].data, b[0].data)
    np.testing.assert_array_equal(a[1].data, b[1].data)
    assert a[0].shape != c[0].shape or not np.array_equal(a[0].data, c[0].data)


@pytest.mark.parametrize("kind", ["screws", "hip_implant"])
def test_metal_is_dense_and_leaves_the_pelvis_labels(world, kind):
    _, _, parts, bone = world
    cfg = FilmSceneConfig(p_metal=1.0, metal_kinds=(kind,))
    ct, labels = film_scene(bone, parts, spacing_mm=4.0, seed=2, config=cfg)
    _, ref = ct_from_mesh(bone, spacing_mm=4.0, seed=2)
    assert (labels.data == 6).sum() > 5 and ct.data.max() > 2500.0
    assert (labels.data == 1).sum() == (ref.data == 1).sum()


def test_recon_data_default_is_the_bone_only_phantom(world):
    from xrecon.methods.recon.data import ReconDataConfig, phantom_of

    space, T, _, bone = world
    assert ReconDataConfig().scene == "bone"
    v_model = (bone.vertices - T[:3, 3]) @ T[:3, :3]
    ct, labels = phantom_of(space, v_model, ReconDataConfig(phantom_spacing_mm=5.0), seed=3)
    ct0, labels0 = ct_from_mesh(BoneModel(v_model @ T[:3, :3].T + T[:3, 3], space.faces), spacing_mm=5.0, seed=3)
    np.testing.assert_array_equal(ct.data, ct0.data)
    np.testing.assert_array_equal(labels.data, labels0.data)
    film, film_labels = phantom_of(space, v_model, ReconDataConfig(phantom_spacing_mm=5.0, scene="film"), seed=3)
    assert film_labels.label_names[8] == "soft_tissue" and film.shape != ct.shape
    with pytest.raises(InputError, match="scene"):
        ReconDataConfig(scene="photo")
    with pytest.raises(InputError, match="pelvis"):
        ReconDataConfig(scene="film", shape_model="femur")
