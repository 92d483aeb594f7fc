"""A corpus of bad inputs through every command, run as a user runs them
(``xrecon.cli.main.run``, the console entry point): each must give exactly one
line ``xrecon: error: ...`` naming the culprit, exit code 2, no traceback, and
leave nothing behind (the test folder holds the same files before and after).

Each case is ``(name, argv builder, text the error line must contain)``; the
builder writes the bad files into ``tmp_path`` and returns the command line.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from xrecon.cli.main import run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


# ------------------------------------------------------------------ file makers
def _png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(array).save(path)
    return path


def _xray(tmp: Path, camera: dict | None = None) -> tuple[Path, Path]:
    """A copy of the example pelvis X-ray, and a camera JSON beside it (the
    example's sidecar, edited by ``camera``; a key set to None is removed)."""
    img = tmp / "xray.png"
    shutil.copy(EXAMPLES / "pelvis_xray.png", img)
    shutil.copy(EXAMPLES / "pelvis_xray.json", tmp / "xray.json")  # its geometry sidecar
    cam = json.loads((EXAMPLES / "pelvis_xray.json").read_text())
    for k, v in (camera or {}).items():
        if v is None:
            cam.pop(k, None)
        else:
            cam[k] = v
    cam_path = tmp / "camera.json"
    cam_path.write_text(json.dumps(cam))
    return img, cam_path


def _camera_case(edit: dict):
    def build(tmp):
        img, cam = _xray(tmp, edit)
        return ["reconstruct", str(img), "--camera", str(cam), "--out", str(tmp / "out")], cam
    return build


def _gt(tmp: Path, n: int = 2) -> Path:
    cases = [{"case_id": f"c{i}", "world_to_cam": np.eye(4).tolist(), "targets_world": [[0, 0, 100], [10, 0, 100]]}
             for i in range(n)]
    path = tmp / "gt.json"
    path.write_text(json.dumps({"cases": cases}))
    return path


def _eval_case(cases):
    def build(tmp):
        pred = tmp / "pred.json"
        pred.write_text(json.dumps({"cases": cases}))
        return ["evaluate", str(pred), str(_gt(tmp)), "--out", str(tmp / "out")], pred
    return build


def _points(tmp: Path, n: int) -> Path:
    path = tmp / "points.npy"
    np.save(path, np.random.default_rng(0).normal(size=(n, 3)) * 50)
    return path


def _malicious_model(tmp: Path) -> Path:
    import torch

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp / 'ran'}",))

    path = tmp / "evil.pt"
    torch.save({"format": "xrecon-recon-model-v1", "x": Payload()}, path)
    return path


def _nifti(path: Path, shape) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.zeros(shape, np.int16), np.eye(4)), str(path))
    return path


def _bad(tmp, name, data: bytes):
    path = tmp / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------ the corpus
def _reconstruct(image_builder):
    def build(tmp):
        img = image_builder(tmp)
        return ["reconstruct", str(img), "--sdd", "1020", "--pixel-spacing", "2.3", "--out", str(tmp / "out")], img
    return build


CASES = {
    # images
    "zero-byte image": (_reconstruct(lambda t: _bad(t, "empty.png", b"")), "empty.png"),
    "missing image": (_reconstruct(lambda t: t / "nothere.png"), "nothere.png"),
    "text as png": (_reconstruct(lambda t: _bad(t, "text.png", b"hello, not an image")), "text.png"),
    "unknown suffix": (_reconstruct(lambda t: _bad(t, "image.xyz", b"\0" * 64)), "image.xyz"),
    "colour image": (_reconstruct(lambda t: _png(t / "colour.png", np.random.default_rng(0).integers(
        0, 255, (64, 64, 3), dtype=np.uint8))), "colour"),
    "constant image": (_reconstruct(lambda t: _png(t / "flat.png", np.full((64, 64), 7, np.uint8))), "constant"),
    "truncated png": (_reconstruct(lambda t: _bad(t, "cut.png", (EXAMPLES / "pelvis_xray.png").read_bytes()[:300])),
                      "cut.png"),
    # camera files: the error names the camera file, not the image
    "camera not JSON": (lambda t: (lambda img, cam: (["reconstruct", str(img), "--camera", str(cam), "--out",
                                                      str(t / "out")], cam))(
        _xray(t)[0], _bad(t, "cam.json", b"{not json")), "cam.json"),
    "camera K 2x2": (_camera_case({"K": [[1000, 0], [0, 1000]]}), "K"),
    "camera K strings": (_camera_case({"K": "identity"}), "K"),
    "camera world_to_cam not rigid": (_camera_case({"world_to_cam": (np.eye(4) * 2).tolist()}), "world_to_cam"),
    "camera world_to_cam 3x3": (_camera_case({"world_to_cam": np.eye(3).tolist()}), "world_to_cam"),
    "camera height string": (_camera_case({"height": "tall"}), "height"),
    "camera principal offset 3 values": (_camera_case({"principal_offset_mm": [1, 2, 3]}), "principal_offset_mm"),
    "camera without sdd": (_camera_case({"sdd_mm": None, "K": None}), "sdd_mm"),
    # options
    "negative sdd": (lambda t: (["reconstruct", str(_xray(t)[0]), "--sdd", "-5", "--out", str(t / "out")], "--sdd"),
                     "--sdd"),
    "output folder is a file": (lambda t: (["reconstruct", str(_xray(t)[0]), "--out",
                                            str(_bad(t, "taken", b"x"))], t / "taken"), "taken"),
    "malicious model": (lambda t: (lambda m: (["reconstruct", str(_xray(t)[0]), "--model", str(m), "--out",
                                               str(t / "out")], m))(_malicious_model(t)), "refused"),
    "junk model": (lambda t: (lambda m: (["register", str(_xray(t)[0]), "--ct", str(EXAMPLES / "pelvis_ct.nii.gz"),
                                          "--model", str(m), "--out", str(t / "out")], m))(
        _bad(t, "junk.pt", b"not a model")), "junk.pt"),
    # CTs
    "missing CT": (lambda t: (["register", str(_xray(t)[0]), "--ct", str(t / "none.nii.gz"), "--out",
                               str(t / "out")], t / "none.nii.gz"), "none.nii.gz"),
    "CT not a volume": (lambda t: (lambda ct: (["register", str(_xray(t)[0]), "--ct", str(ct), "--out",
                                                str(t / "out")], ct))(_bad(t, "ct.nii.gz", b"garbage")), "ct.nii.gz"),
    "labels on another grid": (lambda t: (lambda lb: (["register", str(_xray(t)[0]), "--ct",
                                                       str(EXAMPLES / "pelvis_ct.nii.gz"), "--labels", str(lb),
                                                       "--out", str(t / "out")], lb))(
        _nifti(t / "labels.nii.gz", (5, 6, 7))), "labels.nii.gz"),
    "structures without labels": (lambda t: (["register", str(_xray(t)[0]), "--ct", str(EXAMPLES / "pelvis_ct.nii.gz"),
                                              "--structures", "hip_left", "--out", str(t / "out")], "--labels"),
                                  "--labels"),
    # evaluate
    "evaluate time_s string": (_eval_case([{"case_id": "c0", "world_to_cam": np.eye(4).tolist(),
                                            "time_s": "fast"}]), "time_s"),
    "evaluate duplicated ids": (_eval_case([{"case_id": "c0", "world_to_cam": np.eye(4).tolist()}] * 2), "twice"),
    "evaluate non-rigid pose": (_eval_case([{"case_id": "c0", "world_to_cam": (np.eye(4) * 3).tolist()}]), "rigid"),
    "evaluate empty list": (_eval_case([]), "empty"),
    "evaluate no matching id": (_eval_case([{"case_id": "zz", "world_to_cam": np.eye(4).tolist()}]), "no case id"),
    # shape models
    "ssm fit 3 points": (lambda t: (lambda p: (["ssm", "fit", "pelvis", str(p), "-o", str(t / "out" / "fit")], p))(
        _points(t, 3)), "points.npy"),
    "ssm fit 0 points": (lambda t: (lambda p: (["ssm", "fit", "pelvis", str(p), "-o", str(t / "out" / "fit")], p))(
        _points(t, 0)), "points.npy"),
    "ssm fit negative prior": (lambda t: (["ssm", "fit", "pelvis", str(_points(t, 50)), "--prior-weight", "-1",
                                           "-o", str(t / "out" / "fit")], "--prior-weight"), "--prior-weight"),
    "ssm unknown model": (lambda t: (["ssm", "fit", "skull", str(_points(t, 50)), "-o", str(t / "out" / "fit")],
                                     "skull"), "skull"),
    # training and simulation: refused before anything is simulated or written
    "train scr batch 0": (lambda t: (["train", "scr", "--ct", str(EXAMPLES / "pelvis_ct.nii.gz"), "--data",
                                      str(t / "data"), "--out", str(t / "out"), "--batch-size", "0"],
                                     "--batch-size"), "--batch-size"),
    "train recon views 0": (lambda t: (["train", "recon", "--out", str(t / "out"), "--views", "0"], "--views"),
                            "--views"),
    "train recon malicious init": (lambda t: (lambda m: (["train", "recon", "--out", str(t / "out"), "--init",
                                                          str(m)], m))(_malicious_model(t)), "refused"),
    "train recon on LLP26": (lambda t: (["train", "recon", "--out", str(t / "out"), "--population", "llp26"],
                                        "LLP26"), "LLP26"),
    "simulate n 0": (lambda t: (["simulate", "--n", "0", "--out", str(t / "out")], "--n"), "--n"),
    "simulate missing CT": (lambda t: (["simulate", "--n", "2", "--ct", str(t / "no_ct.nii"), "--out",
                                        str(t / "out")], t / "no_ct.nii"), "no_ct.nii"),
    "unknown command": (lambda t: (["frobnicate"], "frobnicate"), "frobnicate"),
    "unknown option": (lambda t: (["reconstruct", "--colour", "x.png"], "--colour"), "--colour"),
}


def _snapshot(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_gives_one_clean_error_and_writes_nothing(name, tmp_path, capsys):
    build, must_contain = CASES[name]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    argv, culprit = build(inputs)
    before = _snapshot(tmp_path)
    logging.disable(logging.CRITICAL)  # progress lines are not errors; only the error line counts here
    try:
        with pytest.raises(SystemExit) as exit_info:
            run(argv)
    finally:
        logging.disable(logging.NOTSET)
    captured = capsys.readouterr()
    text = captured.err + captured.out
    errors = [line for line in captured.err.splitlines() if line.startswith("xrecon: error:")]
    assert exit_info.value.code == 2, text
    assert "Traceback" not in text, text
    assert len(errors) == 1, text
    assert must_contain in errors[0], errors[0]
    assert str(culprit) in errors[0], f"the error does not name {culprit}: {errors[0]}"
    assert _snapshot(tmp_path) == before, "the command left files behind"
    assert not (inputs / "ran").exists(), "a model file ran code"
