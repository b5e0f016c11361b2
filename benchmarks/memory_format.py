"""Training step and inference per architecture of a config, in the layout as built (NCHW) and channels-last (NHWC).

For every trained architecture of the config (default: the embedded default, config/config.yaml) the
network is built from its spec and timed on random inputs of the config's slice size, one thread:

* ``train``: one step at the spec's batch size (forward, the mean square of the output as loss, backward,
  a fused Adam step), best mean of ``--repeats`` runs of ``--steps`` steps;
* ``infer``: eval-mode forward passes over 128 slices in batches of 16 (as ``medkd infer``), best of
  ``--repeats``.

The two layouts take turns within every repeat (this shared machine's speed drifts by up to 2x within
minutes), each after one warm-up call.

The last column is what ``channels_last: auto`` (the default run setting) uses on CPU: the architecture
class's ``cpu_channels_last`` attribute, set where this benchmark measured NHWC clearly faster on this
project's machines (x86-64, oneDNN). Check it on yours: a ratio above 1 means NHWC is slower. Models whose
``input_keys`` go beyond the image (data-consistency reconstruction) are listed as skipped.
Usage: ``python benchmarks/memory_format.py [--config config/config.yaml] [--threads 1] [--steps 8] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import time

import torch

from medkd.config import load_config, model_spec
from medkd.runtime import build_from_spec


def _main_output(out):
    return out["out"] if isinstance(out, dict) else out


def _train_step(model: torch.nn.Module, x: torch.Tensor):
    """A closure running one training step of ``model`` on ``x`` (fused Adam)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        _main_output(model(x)).float().square().mean().backward()
        optimizer.step()

    return step


def _infer_pass(model: torch.nn.Module, x: torch.Tensor, batch: int = 16):
    """A closure running eval-mode forward passes over all of ``x`` in batches of ``batch``."""

    @torch.no_grad()
    def run():
        model.eval()
        for start in range(0, len(x), batch):
            model(x[start : start + batch])

    return run


def best_ms(closures: dict, calls: int, repeats: int) -> dict:
    """Best mean milliseconds per call of each closure, after one warm-up call each; the closures take
    turns within every repeat, so a machine that slows down mid-way slows them alike."""
    for run in closures.values():
        run()
    best = dict.fromkeys(closures, float("inf"))
    for _ in range(repeats):
        for key, run in closures.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                run()
            best[key] = min(best[key], (time.perf_counter() - t0) / calls * 1e3)
    return best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="config/config.yaml")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    print(f"memory layout, ms ({args.threads} thread(s); train: one step at the spec's batch size; "
          f"infer: 128 slices in batches of 16)")
    print(f"{'architecture':22s} {'batch':>5s} {'train':>8s} {'NHWC':>8s} {'ratio':>6s} {'infer':>8s} {'NHWC':>8s} "
          f"{'ratio':>6s}  auto on CPU")
    seen = set()
    for exp, experiment in cfg["experiments"].items():
        size = cfg["datasets"][experiment["dataset"]].get("convert", {}).get("size", [64, 64])
        for name in experiment["models"]:
            spec = model_spec(cfg, exp, name)
            if spec.arch in seen or spec.train.epochs == 0:
                continue
            seen.add(spec.arch)
            torch.manual_seed(0)
            model = build_from_spec(spec)
            if tuple(getattr(model, "input_keys", ("image",))) != ("image",):
                print(f"{spec.arch:22s} skipped: its inputs go beyond the image ({', '.join(model.input_keys)})")
                continue
            cin = spec.in_out_channels()[0]
            x_train = torch.randn(spec.train.batch_size, cin, *size)
            x_infer = torch.randn(128, cin, *size)
            nets, train_steps, infer_passes = {}, {}, {}
            for nhwc in (False, True):
                layout = torch.channels_last if nhwc else torch.contiguous_format
                torch.manual_seed(0)
                nets[nhwc] = build_from_spec(spec).to(memory_format=layout)
                train_steps[nhwc] = _train_step(nets[nhwc], x_train.contiguous(memory_format=layout))
                infer_passes[nhwc] = _infer_pass(nets[nhwc], x_infer.contiguous(memory_format=layout))
            t = best_ms(train_steps, args.steps, args.repeats)
            i = best_ms(infer_passes, 1, args.repeats)
            ms = {nhwc: (t[nhwc], i[nhwc]) for nhwc in (False, True)}
            auto = "NHWC" if getattr(model, "cpu_channels_last", False) else "as built"
            print(f"{spec.arch:22s} {spec.train.batch_size:5d} {ms[False][0]:8.1f} {ms[True][0]:8.1f} "
                  f"{ms[True][0] / ms[False][0]:6.2f} {ms[False][1]:8.1f} {ms[True][1]:8.1f} "
                  f"{ms[True][1] / ms[False][1]:6.2f}  {auto}")


if __name__ == "__main__":
    main()
