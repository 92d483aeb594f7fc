"""The shared training loop on a tiny linear-regression task with a known answer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _toy import B_TRUE, W_TRUE, toy_datasets, toy_loss, toy_metrics, toy_model  # noqa: E402

from xrecon.errors import InputError  # noqa: E402
from xrecon.train import TrainConfig, load_weights, resumed_run_info, train  # noqa: E402


def _cfg(out, **kw):
    base = dict(out_dir=str(out), epochs=6, batch_size=16, lr=0.1, schedule="constant", weight_decay=0.0,
                warmup_steps=5, progress=False,
                monitor="abs_err", num_threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_learns_the_planted_weights_and_writes_outputs(tmp_path):
    tr, va = toy_datasets()
    model = toy_model()
    res = train(model, toy_loss, tr, va, _cfg(tmp_path), toy_metrics, run_info={"task": "toy"})
    assert torch.allclose(model.weight.detach().T, W_TRUE, atol=0.05)
    assert abs(float(model.bias.detach()) - B_TRUE) < 0.05
    hist = json.loads((tmp_path / "history.json").read_text())
    assert len(hist) == 6 and hist[-1]["val"]["loss"] < 0.1 * hist[0]["train"]["loss"]
    assert hist[-1]["val_metrics"]["abs_err"] < 0.1
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["train_config"]["epochs"] == 6 and cfg["run_info"] == {"task": "toy"}
    assert cfg["versions"]["torch"] == torch.__version__
    assert (tmp_path / "curves.png").stat().st_size > 1000
    # best.pt holds the weights of the best validation epoch
    best_epoch = min(hist, key=lambda h: h["val_metrics"]["abs_err"])["epoch"]
    assert torch.load(res.best_checkpoint, weights_only=True)["epoch"] == best_epoch
    assert res.best_value == pytest.approx(min(h["val_metrics"]["abs_err"] for h in hist))
    fresh = load_weights(toy_model(seed=5), res.last_checkpoint)
    assert torch.equal(fresh.weight, model.weight)
    # a later call on this folder resumes the run: it says what the run was started with
    assert resumed_run_info(_cfg(tmp_path)) == {"task": "toy"}
    assert resumed_run_info(_cfg(tmp_path, resume=False)) is None
    assert resumed_run_info(_cfg(tmp_path / "new")) is None


def test_resume_continues_exactly(tmp_path):
    """Stop after epoch 1, resume to 6 == 6 epochs straight (same batches, same schedule)."""
    tr, va = toy_datasets()
    straight = toy_model()
    train(straight, toy_loss, tr, va, _cfg(tmp_path / "a", schedule="cosine"), toy_metrics)

    # a 6-epoch run cut short after its first epoch by the time limit, then resumed
    cut = toy_model()
    res = train(cut, toy_loss, tr, va, _cfg(tmp_path / "c", schedule="cosine", time_limit_min=0.0), toy_metrics)
    assert res.stopped_early and len(res.history) == 1
    resumed = toy_model(seed=99)  # different init: must be overwritten by the checkpoint
    res2 = train(resumed, toy_loss, tr, va, _cfg(tmp_path / "c", schedule="cosine"), toy_metrics)
    assert [h["epoch"] for h in res2.history] == [1, 2, 3, 4, 5, 6]
    assert torch.allclose(resumed.weight, straight.weight, atol=1e-6)
    assert torch.allclose(resumed.bias, straight.bias, atol=1e-6)


def test_seeded_runs_repeat(tmp_path):
    tr, va = toy_datasets()
    a, b = toy_model(), toy_model()
    train(a, toy_loss, tr, va, _cfg(tmp_path / "a", epochs=2), toy_metrics)
    train(b, toy_loss, tr, va, _cfg(tmp_path / "b", epochs=2), toy_metrics)
    assert torch.equal(a.weight, b.weight)
    c = toy_model()
    train(c, toy_loss, tr, va, _cfg(tmp_path / "c", epochs=2, seed=1), toy_metrics)
    assert not torch.equal(a.weight, c.weight)


def test_bad_settings_are_named():
    with pytest.raises(InputError, match="schedule"):
        TrainConfig(out_dir="x", schedule="linear")
    with pytest.raises(InputError, match="unknown training settings"):
        TrainConfig.from_dict({"out_dir": "x", "epoch": 3})


def test_unknown_monitor_is_an_error(tmp_path):
    tr, va = toy_datasets(n_train=32, n_val=16)
    with pytest.raises(InputError, match="monitor"):
        train(toy_model(), toy_loss, tr, va, _cfg(tmp_path, epochs=1, monitor="nope"), toy_metrics)


def test_ddp_two_processes_gloo(tmp_path):
    """torchrun --nproc_per_node=2 on CPU: ranks stay in sync and the task is learnt."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
           str(Path(__file__).parent / "_ddp_script.py"), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    w0 = torch.load(tmp_path / "final_rank0.pt")
    w1 = torch.load(tmp_path / "final_rank1.pt")
    assert torch.equal(w0["weight"], w1["weight"])
    assert torch.allclose(w0["weight"].T, W_TRUE, atol=0.1)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["world_size"] == 2
    hist = json.loads((tmp_path / "history.json").read_text())
    # each rank sees half the 256 training items per epoch (drop_last per rank)
    assert hist[0]["images_seen"] == 256
