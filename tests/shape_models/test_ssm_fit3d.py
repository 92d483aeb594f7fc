"""fit_points: held-out pelvis from a partial, noisy cloud with outliers in a random frame."""
import numpy as np
import pytest

from shape_models import bundled
from shape_models.fit3d import Fit3DConfig, fit_points
from shape_models.procrustes import apply_transform
from shape_models.synthetic import partial_point_cloud
from xrecon.errors import InputError
from xrecon.metrics.shape import assd


@pytest.fixture(scope="module")
def pelvis():
    return bundled.load_model("pelvis")


def test_held_out_pelvis_partial_noisy_outliers_any_frame(pelvis):
    shapes, ids = bundled.subject_shapes(pelvis, "test")
    true_mesh = shapes[1]
    obs = partial_point_cloud(true_mesh, pelvis.faces_, n_points=3000, noise_mm=1.0, outlier_fraction=0.1, seed=11)
    result = fit_points(pelvis, obs.points, Fit3DConfig(max_points=1500))
    assert result.success, result.reason
    truth_obs = apply_transform(obs.model_to_obs, true_mesh)
    err = assd((result.vertices, pelvis.faces_), (truth_obs, pelvis.faces_), n_samples=5000)
    assert err < 1.0
    # the pose maps the model into the points frame; most planted outliers are flagged
    assert np.isclose(np.linalg.det(result.model_to_points[:3, :3]), 1.0, atol=1e-6)
    assert (~result.inliers[obs.is_outlier]).mean() > 0.8
    assert result.residuals_mm.shape == (len(obs.points),)


def test_degenerate_inputs_fail_with_a_reason(pelvis):
    few = fit_points(pelvis, np.random.default_rng(0).normal(size=(10, 3)))
    assert not few.success and "too few" in few.reason
    line = np.outer(np.linspace(0, 100, 200), [1.0, 2.0, 3.0])
    res = fit_points(pelvis, line)
    assert not res.success and "degenerate" in res.reason
    with pytest.raises(InputError, match="NaN"):
        fit_points(pelvis, np.full((100, 3), np.nan))
