"""A tiny regression task with an analytic answer, shared by the loop tests and
the DDP script: y = x @ w_true + b_true (noise-free), a linear model learns it."""
from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

W_TRUE = torch.tensor([[1.5], [-2.0], [0.5], [3.0]])
B_TRUE = 0.7


def toy_datasets(n_train: int = 256, n_val: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_val, 4, generator=g)
    y = x @ W_TRUE + B_TRUE
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


def toy_model(seed: int = 123) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 1)


def toy_loss(model, batch):
    x, y = batch
    err = model(x) - y
    return (err**2).mean(), {"mae": err.abs().mean()}


def toy_metrics(model, batch):
    x, y = batch
    return {"abs_err": (model(x) - y).abs().reshape(-1)}
