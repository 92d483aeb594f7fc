"""`xrecon simulate`: a small run, bad inputs (one line, exit 2, nothing written),
and a run killed mid-way that resumes to the same dataset."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from xrecon.anatomy.ct_io import write_volume
from xrecon.anatomy.volume import Volume
from xrecon.cli.simulate import simulate

from .conftest import ball_phantom

FAST = ["--size", "24", "--spacing-mm", "2", "--n-samples", "32", "--surface-samples", "16", "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_inputs")
    ct, labels = ball_phantom(centre_world=(5.0, -8.0, 50.0), radius_mm=12.0, shape=(40, 40, 40))
    write_volume(root / "ct.nii.gz", ct)
    write_volume(root / "labels.nii.gz", labels)
    (root / "names.json").write_text(json.dumps({"1": "ball"}))
    return root, ct, labels


def _invoke(args):
    app = typer.Typer()
    app.command()(simulate)
    return CliRunner().invoke(app, [str(a) for a in args])


def _base(files, out):
    root = files[0]
    return ["--ct", root / "ct.nii.gz", "--labels", root / "labels.nii.gz", "--label-names", root / "names.json", "--out", out] + FAST


def _shards(out: Path) -> dict[str, np.ndarray]:
    data = {}
    for p in sorted(out.glob("shard-*.h5")):
        with h5py.File(p, "r") as f:
            for k in ("image", "entry_world", "sample_index", "world_to_cam"):
                data.setdefault(k, []).append(f[k][()])
    return {k: np.concatenate(v) for k, v in data.items()}


def test_simulate_writes_a_dataset(files, tmp_path):
    out = tmp_path / "ds"
    res = _invoke(_base(files, out) + ["--n", "5", "--shard-size", "2", "--structures", "ball"])
    assert res.exit_code == 0, res.output
    assert "5 images written in 3 shards" in res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity"]["structures"] == {"1": "ball"} and manifest["bone"]["landmark_names"] == ["ball"]
    assert np.array_equal(_shards(out)["sample_index"], np.arange(5))
    again = _invoke(_base(files, out) + ["--n", "5", "--shard-size", "2", "--structures", "ball"])
    assert again.exit_code == 0 and "0 images written" in again.output and "3 already complete" in again.output


def _bad_inputs(root: Path, tmp_path: Path, ct: Volume, labels: Volume) -> dict[str, tuple[list, str, str]]:
    """name -> (arguments replacing the defaults, the file the message names, words in it)."""
    truncated = tmp_path / "truncated.nii.gz"
    blob = (root / "ct.nii.gz").read_bytes()
    truncated.write_bytes(blob[: len(blob) // 2])
    flat = tmp_path / "flat.nii.gz"  # an X-ray-like 2D image
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.float32), np.eye(4)), str(flat))
    nan_ct = tmp_path / "nan.nii.gz"
    data = ct.data.copy()
    data[3, 4, 5] = np.nan
    write_volume(nan_ct, Volume(data, ct.voxel_to_world))
    empty = tmp_path / "empty_labels.nii.gz"
    write_volume(empty, labels.with_data(np.zeros(labels.shape, np.uint8)))
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    names = root / "names.json"
    return {
        "truncated": (["--ct", truncated, "--labels", root / "labels.nii.gz"], "truncated.nii.gz", ""),
        "2d": (["--ct", flat, "--labels", root / "labels.nii.gz"], "flat.nii.gz", "3D volume"),
        "nan": (["--ct", nan_ct, "--labels", root / "labels.nii.gz"], "nan.nii.gz", "NaN"),
        "unknown label": (["--ct", root / "ct.nii.gz", "--labels", root / "labels.nii.gz", "--label-names", names, "--structures", "femur"], "labels.nii.gz", "unknown label 'femur'"),
        "empty mask": (["--ct", root / "ct.nii.gz", "--labels", empty], "empty_labels.nii.gz", "no structure"),
        "unwritable": (["--ct", root / "ct.nii.gz", "--labels", root / "labels.nii.gz", "--out", blocker / "ds"], "a_file", "not a folder"),
    }


def test_bad_input_gives_one_line_and_no_dataset(files, tmp_path):
    root, ct, labels = files
    for name, (args, named_file, words) in _bad_inputs(root, tmp_path, ct, labels).items():
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        if "--out" not in args:
            args = args + ["--out", out]
        res = _invoke(args + FAST + ["--n", "3"])
        assert res.exit_code == 2, (name, res.output)
        lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("xrecon: error:"), (name, res.output)
        assert named_file in lines[0] and words in lines[0], (name, lines[0])
        assert not out.exists(), name


# Runs the real command in a child process that SIGKILLs itself while the 4th shard's
# temporary file is on disk (finished, not yet renamed): a hard kill at a known point,
# whatever the machine's speed.
_KILL_AT_4TH_SHARD = """
import os, signal, sys
import xrecon.sim.dataset as d
from xrecon.cli.main import run
calls, share = [], d._share
def share_then_die(path):
    share(path)
    if path.name.startswith(".shard-"):
        calls.append(path)
    if len(calls) == 4:
        os.kill(os.getpid(), signal.SIGKILL)
d._share = share_then_die
sys.argv = ["xrecon", *sys.argv[1:]]
run()
"""


def test_killed_run_resumes_to_the_same_dataset(files, tmp_path):
    out, reference = tmp_path / "killed", tmp_path / "reference"
    args = [str(a) for a in _base(files, out) + ["--n", "10", "--shard-size", "1", "--seed", "5"]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", _KILL_AT_4TH_SHARD, "simulate", *args], env=env, capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    n_before = len(list(out.glob("shard-*.h5")))
    assert n_before == 3, "three shards finished before the kill"
    assert [p.name for p in out.iterdir() if p.name.startswith(".shard-")], "the 4th shard's temporary is left behind"
    res = _invoke(args)
    assert res.exit_code == 0, res.output
    assert f"{10 - n_before} images written" in res.output
    assert _invoke(_base(files, reference) + ["--n", "10", "--shard-size", "1", "--seed", "5"]).exit_code == 0
    got, ref = _shards(out), _shards(reference)
    assert np.array_equal(got["sample_index"], np.arange(10))
    for k in ("image", "entry_world", "world_to_cam"):
        assert np.array_equal(got[k], ref[k], equal_nan=True), k
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_without_labels_the_bone_comes_from_an_hu_threshold(files, tmp_path):
    root = files[0]
    out = tmp_path / "thresholded"
    res = _invoke(["--ct", root / "ct.nii.gz", "--out", out, "--n", "2", "--hu-threshold", "700"] + FAST)
    assert res.exit_code == 0, res.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["identity"]["structures"] is None and manifest["bone"]["landmark_names"] == ["component_1"]
    assert np.allclose(manifest["bone"]["landmarks_world"][0], [5.0, -8.0, 50.0], atol=0.5)  # the ball's centre
    bad = _invoke(["--ct", root / "ct.nii.gz", "--out", tmp_path / "x", "--n", "2", "--structures", "ball"] + FAST)
    assert bad.exit_code == 2 and "need a label map" in bad.output and not (tmp_path / "x").exists()
