"""Run by tests/train/test_loop.py under ``torchrun --nproc_per_node=2`` (gloo, CPU)."""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _toy import toy_datasets, toy_loss, toy_metrics, toy_model  # noqa: E402

from xrecon.train import TrainConfig, train  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    tr, va = toy_datasets()
    cfg = TrainConfig(out_dir=sys.argv[1], epochs=10, batch_size=16, lr=0.2, weight_decay=0.0, warmup_steps=0,
                      schedule="constant", progress=False, monitor="abs_err")
    model = toy_model()
    res = train(model, toy_loss, tr, va, cfg, toy_metrics)
    # every rank must hold the same weights after DDP steps
    torch.save(model.state_dict(), Path(sys.argv[1]) / f"final_rank{torch.distributed.get_rank()}.pt")
