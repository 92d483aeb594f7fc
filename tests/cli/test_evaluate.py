"""``xrecon evaluate --model M --data D``: a model run on a simulated test set and
scored against the set's own ground truth (tiny synthetic CT, 32 px images).
An untrained SCR model file exercises the whole CLI path (most of its poses
fail, which must be counted, not dropped); an oracle network that returns the
dataset's true scene coordinates checks that the dispatch, the camera and the
scoring agree (mTRE ~ 0)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from xrecon.anatomy.bone import BoneModel
from xrecon.anatomy.ct_io import write_volume
from xrecon.anatomy.volume import Volume

torch.set_num_threads(1)

#: TotalSegmentator v1 ids of two vertebrae (the label names the SCR trainer expects).
T1, T2 = 43, 42


def _phantom():
    """Two boxes of 'bone' in water (2 mm voxels), their labels and a box mesh
    whose landmarks are the two box centres."""
    import trimesh

    shape = (40, 40, 30)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-40.0, -40.0, -30.0)
    lab = np.zeros(shape, np.int16)
    lab[10:20, 12:28, 8:22] = T1
    lab[22:30, 15:25, 10:20] = T2
    ct = Volume(np.where(lab > 0, 1200.0, 0.0).astype(np.float32), affine, "<phantom>")
    labels = Volume(lab, affine, "<phantom labels>", {T1: "vertebrae_T1", T2: "vertebrae_T2"})
    meshes, centres = [], []
    for i in (T1, T2):
        ijk = np.argwhere(lab == i)
        lo = labels.voxel_to_world_points(ijk.min(0)[None] - 0.5)[0]
        hi = labels.voxel_to_world_points(ijk.max(0)[None] + 0.5)[0]
        meshes.append(trimesh.creation.box(bounds=np.stack([lo, hi])))
        centres.append((lo + hi) / 2)
    m = trimesh.util.concatenate(meshes)
    bone = BoneModel(m.vertices, m.faces, np.array(centres), ["vertebrae_T1", "vertebrae_T2"], source="<boxes>")
    return ct, labels, bone


@pytest.fixture(scope="module")
def scr_on_phantom(tmp_path_factory):
    """A 4-image simulated set of the phantom and an (untrained) SCR model file for its CT."""
    from xrecon.methods.scr.model_io import SCRModelInfo, save_scr_model
    from xrecon.methods.scr.network import CoordinateNormalizer, SceneCoordinateNet
    from xrecon.sim.dataset import DatasetConfig, SimulatedDataset, write_dataset
    from xrecon.sim.detector import DEEPFLUORO
    from xrecon.sim.poses import PoseSamplerConfig

    root = tmp_path_factory.mktemp("evaluate")
    ct, labels, bone = _phantom()
    write_volume(root / "ct.nii.gz", ct)
    write_dataset(root / "data", ct, bone, DEEPFLUORO.binned(32),
                  DatasetConfig(n=4, seed=0, shard_size=2, poses=PoseSamplerConfig(offset_std_mm=(5.0, 5.0, 5.0))),
                  labels=labels, structures={T1: "vertebrae_T1", T2: "vertebrae_T2"}, progress=False)
    ds = SimulatedDataset(root / "data", fields=())
    torch.manual_seed(0)
    net = SceneCoordinateNet(CoordinateNormalizer((0.0, 0.0, 0.0), 40.0), 4, 3)
    info = SCRModelInfo(dict(net.config), ds.camera,
                        {"path": "<phantom>", "sha256": ds.manifest["identity"]["ct_sha256"]})
    save_scr_model(root / "scr.pt", net, info)
    return root


def test_model_on_a_simulated_set_writes_the_table_csv_plots_and_rescorable_files(scr_on_phantom, tmp_path):
    from xrecon.cli.main import app
    from xrecon.metrics.registration import mtre_mm
    from xrecon.sim.dataset import SimulatedDataset

    root = scr_on_phantom
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["evaluate", "--model", str(root / "scr.pt"), "--data", str(root / "data"),
                                   "--limit", "3", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "| specimen | cases |" in res.output and "mTRE p50" in res.output
    for name in ("per_case.csv", "summary.json", "summary.md", "error_histogram.png", "success_curve.png",
                 "predictions.json", "ground_truth.json"):
        assert (out / name).stat().st_size > 0, name
    rows = list(csv.DictReader((out / "per_case.csv").open()))
    assert [r["case_id"] for r in rows] == ["0", "1", "2"]  # --limit, in dataset order

    # every row's mTRE is the distance of the dataset's landmarks under the
    # predicted and the dataset's true pose, computed here independently
    ds = SimulatedDataset(root / "data", fields=("world_to_cam",))
    targets = np.asarray(ds.manifest["bone"]["landmarks_world"])
    preds = {c["case_id"]: c for c in json.loads((out / "predictions.json").read_text())["cases"]}
    for i, r in enumerate(rows):
        pose = preds[r["case_id"]]["world_to_cam"]
        assert (r["success"] == "True") == (pose is not None)
        if pose is None:
            assert r["mtre_mm"] in ("nan", "inf")
            continue
        want = float(mtre_mm(np.asarray(pose), ds[i]["world_to_cam"].double().numpy(), targets)[0])
        assert float(r["mtre_mm"]) == pytest.approx(want, rel=1e-5)
        assert float(r["time_s"]) > 0
    assert json.loads((out / "summary.json").read_text())["mtre_mm"]["all"]["n"] == 3

    # the written files re-score to the same table without the model
    again = CliRunner().invoke(app, ["evaluate", str(out / "predictions.json"), str(out / "ground_truth.json"),
                                     "--out", str(tmp_path / "again"), "--no-plots"])
    assert again.exit_code == 0, again.output
    assert (tmp_path / "again" / "per_case.csv").read_text() == (out / "per_case.csv").read_text()


class _OracleNet:
    """Stands in for a trained network: the dataset's true entry / exit points
    of the image it is shown (found by the image's bytes), confident on the
    bone and NaN elsewhere."""

    def __init__(self, root):
        from xrecon.sim.dataset import SimulatedDataset

        ds = SimulatedDataset(root, fields=("entry_world", "exit_world"))
        self.maps = {ds[i]["image"][0].numpy().tobytes(): (ds[i]["entry_world"], ds[i]["exit_world"])
                     for i in range(len(ds))}

    def eval(self):
        return self

    def predict(self, images):
        from xrecon.methods.scr.network import SceneCoordinates

        entry, exit_ = (m.permute(1, 2, 0)[None].float() for m in self.maps[images[0, 0].numpy().tobytes()])
        log_sigma = torch.where(torch.isnan(entry[..., 0]), 5.0, -5.0)
        return SceneCoordinates(entry, exit_, log_sigma, log_sigma.clone(), 40.0)


def test_an_oracle_network_scores_near_zero_through_the_model_path(scr_on_phantom, tmp_path, monkeypatch):
    from xrecon.evaluate import evaluate_model
    from xrecon.methods.scr import model_io

    root = scr_on_phantom
    real_load = model_io.load_scr_model
    monkeypatch.setattr(model_io, "load_scr_model",
                        lambda path, device="cpu": (_OracleNet(root / "data"), real_load(path, device)[1]))
    table, paths = evaluate_model(root / "scr.pt", root / "data", tmp_path / "oracle", plots=False, progress=False)
    assert len(table.rows) == 4 and all(r["success"] for r in table.rows)
    assert max(r["mtre_mm"] for r in table.rows) < 0.01
    assert max(r["projected_mtre_mm"] for r in table.rows) < 0.01
    assert table.mtre["all"].gfr[5.0] == 0.0


def test_a_reconstruction_model_registers_the_dataset_ct_checked_by_hash(scr_on_phantom, tmp_path, monkeypatch):
    # the reconstruction path dispatches to xrecon.api.register with the dataset's CT;
    # register is replaced by an oracle here (the shipped model knows pelvises, not boxes)
    from types import SimpleNamespace

    from xrecon import api
    from xrecon.errors import InputError
    from xrecon.evaluate import evaluate_model
    from xrecon.methods.recon.model_io import FORMAT
    from xrecon.sim.dataset import SimulatedDataset

    root = scr_on_phantom
    torch.save({"format": FORMAT}, tmp_path / "recon.pt")
    ds = SimulatedDataset(root / "data", fields=("world_to_cam",))
    truth = {ds[i]["image"][0].numpy().tobytes(): ds[i]["world_to_cam"].double().numpy() for i in range(len(ds))}
    seen = []

    def oracle_register(image, camera, ct, labels=None, structures=None, **kw):
        seen.append((ct.source, kw.get("model")))
        return SimpleNamespace(success=True, ct_to_cam=truth[np.asarray(image).tobytes()],
                               registration=SimpleNamespace(reason=""))

    monkeypatch.setattr(api, "register", oracle_register)
    table, _ = evaluate_model(tmp_path / "recon.pt", root / "data", tmp_path / "out", limit=2,
                              ct_path=root / "ct.nii.gz", plots=False, progress=False)
    assert len(seen) == 2 and seen[0][1] == tmp_path / "recon.pt" and seen[0][0].endswith("ct.nii.gz")
    assert [r["mtre_mm"] for r in table.rows] == [0.0, 0.0]
    with pytest.raises(InputError, match="not the one the dataset was simulated from"):
        evaluate_model(tmp_path / "recon.pt", root / "data", tmp_path / "out2", progress=False)  # default CT


@pytest.mark.parametrize("args, message", [
    (["--model", "m.pt"], "--model and --data go together"),
    ([], "nothing to evaluate"),
    (["p.json", "g.json", "--model", "m.pt", "--data", "d"], "not both"),
])
def test_bad_mode_combinations_fail_with_one_line(args, message, tmp_path):
    from xrecon.cli.main import app

    res = CliRunner().invoke(app, ["evaluate", *args, "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and message in res.output


def test_a_model_for_another_ct_is_refused(scr_on_phantom, tmp_path):
    from xrecon.cli.main import app
    from xrecon.sim.dataset import DatasetConfig, write_dataset
    from xrecon.sim.detector import DEEPFLUORO

    ct, labels, bone = _phantom()
    ct.data[0, 0, 0] = 5.0  # another CT
    write_dataset(tmp_path / "other", ct, bone, DEEPFLUORO.binned(32), DatasetConfig(n=1, seed=1, shard_size=1),
                  labels=labels, structures={T1: "vertebrae_T1", T2: "vertebrae_T2"}, progress=False)
    res = CliRunner().invoke(app, ["evaluate", "--model", str(scr_on_phantom / "scr.pt"), "--data",
                                   str(tmp_path / "other"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "another CT" in res.output
