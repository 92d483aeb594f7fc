"""The shared training loop (:mod:`xrecon.train.loop`): one loop for every network.

Use::

    from xrecon.train import TrainConfig, train
    result = train(model, loss_fn, train_set, val_set, TrainConfig(out_dir="runs/x"))

Single process: ``python my_script.py``; several processes (DDP):
``torchrun --nproc_per_node=N my_script.py`` (gloo on CPU, nccl on CUDA).
"""
from xrecon.train.loop import (TrainConfig, TrainResult, evaluate, load_weights, resumed_run_info, seed_everything,
                               to_device, train)

__all__ = ["TrainConfig", "TrainResult", "train", "evaluate", "load_weights", "seed_everything", "to_device", "resumed_run_info"]
