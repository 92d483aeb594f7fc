"""Model and checkpoint files are untrusted input: loading one never runs code.

Each loader gets a pickle whose unpickling would create a marker file (the
classic ``__reduce__`` -> ``os.system`` payload); the load must be refused
with an InputError naming the file, and the marker must not exist.
"""
from __future__ import annotations

import os

import pytest
import torch

from xrecon.errors import InputError


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious(tmp_path, name="evil.pt", fmt="xrecon-recon-model-v1"):
    marker = tmp_path / f"{name}.ran"
    path = tmp_path / name
    # a plausible-looking model file: right format tag, the payload hidden in a value
    torch.save({"format": fmt, "format_version": 1, "state_dict": {}, "info": {"x": _Payload(marker)}}, path)
    return path, marker


def _loaders():
    from xrecon.api import model_kind
    from xrecon.methods.baselines.train import load_baseline
    from xrecon.methods.recon.model_io import load_recon_model
    from xrecon.methods.scr.model_io import load_scr_model
    from xrecon.train import load_weights

    return {
        "recon": lambda p: load_recon_model(p),
        "scr": lambda p: load_scr_model(p),
        "posenet": lambda p: load_baseline(p, "posenet"),
        "checkpoint": lambda p: load_weights(torch.nn.Linear(2, 2), p),
        "model_kind": lambda p: model_kind(p),
    }


@pytest.mark.parametrize("loader", ["recon", "scr", "posenet", "checkpoint", "model_kind"])
def test_malicious_model_file_runs_no_code(tmp_path, loader):
    path, marker = _malicious(tmp_path)
    with pytest.raises(InputError, match="refused") as info:
        _loaders()[loader](path)
    assert str(path) in str(info.value)
    assert not marker.exists(), "unpickling ran the payload"


def test_the_payload_does_run_when_unpickled_unsafely(tmp_path):
    """The check above can fail: the same file run through a plain unpickler creates the marker."""
    path, marker = _malicious(tmp_path)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_shipped_weights_are_plain_data():
    from xrecon.io import load_torch_file
    from xrecon.methods.recon.model_io import DEFAULT_MODEL

    for path in (DEFAULT_MODEL, DEFAULT_MODEL.with_name("scr_default.pt")):
        payload = load_torch_file(path)
        assert isinstance(payload, dict) and payload["format"].startswith("xrecon-")


def test_not_a_model_file(tmp_path):
    from xrecon.io import load_torch_file

    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(InputError, match="cannot read the model file"):
        load_torch_file(tmp_path / "junk.pt")
    with pytest.raises(InputError, match="no such model file"):
        load_torch_file(tmp_path / "missing.pt")
