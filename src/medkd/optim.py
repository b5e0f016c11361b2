"""Optimisers and learning-rate schedules from a :class:`medkd.spec.TrainSpec` (stepped once per epoch)."""

from __future__ import annotations

import torch

from medkd.spec import OptimizerSpec, SchedulerSpec


def build_optimizer(params, cfg: OptimizerSpec) -> torch.optim.Optimizer:
    """Adam, AdamW, SGD or RMSprop; optional keys left ``None`` keep torch's own defaults."""
    extra = {} if cfg.eps is None else {"eps": cfg.eps}
    if cfg.name in ("adam", "adamw"):
        if cfg.betas is not None:
            extra["betas"] = tuple(cfg.betas)
        cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
        return cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum or 0.0)
    if cfg.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay,
                                   alpha=0.99 if cfg.alpha is None else cfg.alpha, momentum=cfg.momentum or 0.0,
                                   **extra)
    raise ValueError(f"unknown optimizer {cfg.name!r}")


def build_scheduler(optimizer, cfg: SchedulerSpec, epochs: int):
    """None, StepLR (gamma default 0.1 as torch) or cosine annealing over ``epochs``."""
    if cfg.name == "none":
        return None
    if cfg.name == "step":
        if cfg.step_size is None:
            raise ValueError("scheduler 'step' needs step_size")
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size,
                                               gamma=0.1 if cfg.gamma is None else cfg.gamma)
    if cfg.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    raise ValueError(f"unknown scheduler {cfg.name!r}")
