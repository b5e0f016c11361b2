"""One optimiser step per architecture of a config: torch's per-tensor loop, multi-tensor (foreach) and fused.

For every trained architecture of the config (default: the embedded default, config/config.yaml) the
network is built from its spec, every trainable parameter gets a random gradient, and ``--steps`` steps of
the spec's optimiser are timed in each implementation after 3 warm-up steps (best of ``--repeats``). This
is what :func:`medkd.optim.build_optimizer` chose ``fused=True`` on: the step is the same update rule, and
the loop over tensors is what costs on a CPU. Usage: ``python benchmarks/optimizer_step.py [--config
config/config.yaml] [--threads 1] [--steps 30] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from medkd.config import load_config, model_spec
from medkd.runtime import build_from_spec

IMPLEMENTATIONS = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}
CLASSES = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def step_ms(params: list, cls, kwargs: dict, steps: int, repeats: int) -> float:
    """Best mean milliseconds per ``optimizer.step()`` over ``repeats`` runs of ``steps`` steps."""
    optimizer = cls(params, lr=1e-4, **kwargs)
    for _ in range(3):
        optimizer.step()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(steps):
            optimizer.step()
        best = min(best, (time.perf_counter() - t0) / steps * 1e3)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    print(f"optimizer step, ms ({args.threads} thread(s), best of {args.repeats} x {args.steps} steps)")
    print(f"{'architecture':22s} {'optim':6s} {'tensors':>7s} {'params':>9s} " +
          " ".join(f"{name:>8s}" for name in IMPLEMENTATIONS) + "  loop/fused")
    seen = set()
    for exp, experiment in cfg["experiments"].items():
        for name in experiment["models"]:
            spec = model_spec(cfg, exp, name)
            key = (spec.arch, spec.train.optimizer.name)
            if key in seen or spec.train.epochs == 0 or spec.train.optimizer.name not in CLASSES:
                continue
            seen.add(key)
            torch.manual_seed(0)
            params = [p for p in build_from_spec(spec).parameters() if p.requires_grad]
            for p in params:
                p.grad = torch.randn_like(p)
            cls = CLASSES[spec.train.optimizer.name]
            ms = {impl: step_ms(params, cls, kw, args.steps, args.repeats) for impl, kw in IMPLEMENTATIONS.items()}
            print(f"{spec.arch:22s} {spec.train.optimizer.name:6s} {len(params):7d} "
                  f"{sum(p.numel() for p in params):9d} " + " ".join(f"{v:8.2f}" for v in ms.values())
                  + f"  {ms['loop'] / ms['fused']:9.1f}x")


if __name__ == "__main__":
    main()
