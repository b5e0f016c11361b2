"""Optimisers: torch's fused kernel where it exists, the same update as torch's per-tensor loop."""

import pytest
import torch
from torch import nn

from medkd.optim import build_optimizer, build_scheduler
from medkd.spec import OptimizerSpec, SchedulerSpec


def spec(name: str, **kw) -> OptimizerSpec:
    return OptimizerSpec.from_dict({"name": name, "lr": 0.01, "weight_decay": 1e-4, **kw})


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 3, 1))


@pytest.mark.parametrize("name, flag", [("adam", "fused"), ("adamw", "fused"), ("sgd", "fused"),
                                        ("rmsprop", "foreach")])
def test_fastest_implementation_on_cpu(name, flag):
    group = build_optimizer(net().parameters(), spec(name, momentum=0.9)).param_groups[0]
    assert group[flag] is True
    assert not group.get("foreach" if flag == "fused" else "fused")


@pytest.mark.parametrize("name, cls, kw", [
    ("adam", torch.optim.Adam, {"betas": [0.8, 0.99], "eps": 1e-7}),
    ("adamw", torch.optim.AdamW, {}),
    ("sgd", torch.optim.SGD, {"momentum": 0.9}),
])
def test_same_update_as_the_per_tensor_loop(name, cls, kw):
    """20 steps with fixed per-step gradients (so no feedback through the network can amplify rounding):
    the fused optimiser ends within float32 rounding of torch's reference loop (``foreach=False``) built
    with the same hyper-parameters, and far from where it started."""
    gen = torch.Generator().manual_seed(1)
    grads = [[torch.randn(p.shape, generator=gen) * 10.0 ** -k for p in net().parameters()] for k in range(20)]
    finals = []
    for build in (lambda p: build_optimizer(p, spec(name, **kw)),
                  lambda p: cls(p, lr=0.01, weight_decay=1e-4, foreach=False,
                                **{k: tuple(v) if k == "betas" else v for k, v in kw.items()})):
        params = list(net().parameters())
        optimizer = build(params)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            optimizer.step()
        finals.append([p.detach().clone() for p in params])
    start = [p.detach() for p in net().parameters()]
    assert max(float((a - s).abs().max()) for a, s in zip(finals[0], start)) > 0.02
    for fused, loop in zip(*finals):
        torch.testing.assert_close(fused, loop, rtol=1e-5, atol=1e-6)


def test_sgd_takes_no_eps_and_unknown_names_are_refused():
    assert "eps" not in build_optimizer(net().parameters(), spec("sgd", eps=1e-8)).param_groups[0]
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        build_optimizer(net().parameters(), spec("lion"))


def test_float64_parameters_are_fused_too_and_no_scheduler_is_none():
    p = nn.Parameter(torch.zeros(3, dtype=torch.float64))
    assert build_optimizer([p], spec("adam")).param_groups[0]["fused"] is True
    assert build_scheduler(build_optimizer([p], spec("adam")), SchedulerSpec.from_dict({"name": "none"}), 3) is None
