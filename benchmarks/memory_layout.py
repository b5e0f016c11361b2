"""NCHW or NHWC (channels_last) on this CPU: one training step and one inference batch of every architecture
of a config, in both memory layouts.

Every model of every experiment of the config (default: the embedded default, config/config.yaml) is built
from its resolved spec (channels, classes, arch kwargs) and timed at its own batch size on random 64 x 64
inputs: a training step (forward, mean of the output, backward, Adam step) and a forward pass under
``torch.no_grad``. Models of the same architecture and arguments are timed once. Each figure is the best of
``--repeats`` rounds of ``--steps`` steps, with one warm-up step; the layouts alternate so that a busy
machine penalises both. ``channels_last`` is a run setting (config key ``channels_last``): it changes no spec
hash, only which oneDNN kernels run, so the figures decide the default's setting.

Usage: ``python benchmarks/memory_layout.py [--config config/config.yaml] [--threads 1] [--steps 6]
[--repeats 3]``. Prints one row per architecture with milliseconds per step in each layout and the ratio.
"""

from __future__ import annotations

import argparse
import time

import torch

from medkd.config import load_config, model_spec
from medkd.runtime import build_from_spec, forward_model, to_device


def _batch(model: torch.nn.Module, cin: int, batch_size: int, size: int) -> dict:
    """Random inputs for ``model.input_keys``: image ``(B, cin, H, W)``; k-space complex ``(B, H, W)`` and
    a ``(H, W)`` sampling mask for the data-consistency models."""
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(batch_size, cin, size, size, generator=g)}
    keys = getattr(model, "input_keys", ("image",))
    if "kspace" in keys:
        batch["kspace"] = torch.fft.fft2(batch["image"][:, 0], norm="ortho")
    if "mask" in keys:
        batch["mask"] = (torch.rand(size, size, generator=g) < 0.3).float()
    return batch


def _first_tensor(out) -> torch.Tensor:
    if isinstance(out, dict):
        out = out.get("out", next(iter(out.values())))
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out


def time_model(spec, channels_last: bool, steps: int, size: int) -> tuple[float, float]:
    """Seconds per training step and per inference batch of ``spec``'s network at its batch size."""
    torch.manual_seed(0)
    model = build_from_spec(spec)
    cin, _ = spec.in_out_channels()
    batch = to_device(_batch(model, cin, spec.train.batch_size, size), torch.device("cpu"), channels_last)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        opt.zero_grad()
        _first_tensor(forward_model(model, batch)).float().mean().backward()
        opt.step()

    model.train()
    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    train_s = (time.perf_counter() - t0) / steps
    model.eval()
    with torch.no_grad():
        forward_model(model, batch)
        t0 = time.perf_counter()
        for _ in range(steps):
            forward_model(model, batch)
    return train_s, (time.perf_counter() - t0) / steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the default runs 2 jobs of 1 thread)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    specs, seen = [], set()
    for exp, entry in cfg["experiments"].items():
        for name, model in entry["models"].items():
            spec = model_spec(cfg, exp, name)
            key = (spec.arch, repr(spec.arch_kwargs), spec.in_out_channels(), spec.train.batch_size)
            if spec.arch != "identity" and key not in seen:
                seen.add(key)
                specs.append((f"{exp}/{name}", spec))
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.size}x{args.size}, best of {args.repeats}"
          f" x {args.steps} steps; ms per training step | per inference batch")
    print(f"  {'model (first of its architecture)':34s} {'arch':20s} {'batch':>5s} {'train NCHW':>11s} {'NHWC':>7s}"
          f" {'ratio':>6s} {'infer NCHW':>11s} {'NHWC':>7s} {'ratio':>6s}")
    totals = [0.0, 0.0, 0.0, 0.0]
    for label, spec in specs:
        best = {False: [float("inf")] * 2, True: [float("inf")] * 2}
        for _ in range(args.repeats):
            for cl in (False, True):
                got = time_model(spec, cl, args.steps, args.size)
                best[cl] = [min(a, b) for a, b in zip(best[cl], got)]
        (tr0, in0), (tr1, in1) = best[False], best[True]
        totals = [t + v for t, v in zip(totals, (tr0, tr1, in0, in1))]
        print(f"  {label:34s} {spec.arch:20s} {spec.train.batch_size:5d} {tr0 * 1e3:11.1f} {tr1 * 1e3:7.1f}"
              f" {tr1 / tr0:6.2f} {in0 * 1e3:11.1f} {in1 * 1e3:7.1f} {in1 / in0:6.2f}")
    print(f"  {'sum over architectures':34s} {'':20s} {'':5s} {totals[0] * 1e3:11.1f} {totals[1] * 1e3:7.1f}"
          f" {totals[1] / totals[0]:6.2f} {totals[2] * 1e3:11.1f} {totals[3] * 1e3:7.1f} {totals[3] / totals[2]:6.2f}")


if __name__ == "__main__":
    main()
