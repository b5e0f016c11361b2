"""What every stage that runs a network shares: run settings, devices, building and loading models.

Run settings (device, threads) come from the rule's command line, never from the hashed spec; they are
recorded in each job's ``env.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from medkd.io import read_json
from medkd.models import build_model
from medkd.spec import ModelSpec


@dataclass(frozen=True)
class RunSettings:
    """How (not what) a job runs. ``device``: auto | cpu | cuda; ``threads``: torch intra-op threads."""

    device: str = "auto"
    threads: int = 1

    def apply(self) -> torch.device:
        """Set torch's thread count and return the resolved device."""
        torch.set_num_threads(int(self.threads))
        return resolve_device(self.device)

    def record(self) -> dict:
        return {"device": self.device, "threads": int(self.threads)}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. Raises RuntimeError for cuda without a CUDA device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def build_from_spec(spec: ModelSpec) -> nn.Module:
    """A freshly initialised network of ``spec.arch`` with the spec's channel counts and arch kwargs."""
    cin, cout = spec.in_out_channels()
    kwargs = {k: v for k, v in spec.arch_kwargs.items() if k != "out_channels"}
    return build_model(spec.arch, in_channels=cin, out_channels=cout, **kwargs)


def load_trained(model_dir: str | Path, device: torch.device | str = "cpu") -> tuple[nn.Module, ModelSpec]:
    """The best weights of a finished model directory (``model.pt``), in eval mode, and its spec
    (from ``config.json``)."""
    from medkd.integrity import reading

    model_dir = Path(model_dir)
    cfg = read_json(model_dir / "config.json")
    with reading(model_dir / "config.json", "model config"):
        spec = ModelSpec.from_dict(cfg["spec"])
    model = build_from_spec(spec)
    state = load_weights(model_dir, device)
    with reading(model_dir / "model.pt", "checkpoint"):
        model.load_state_dict(state)
    return model.to(device).eval(), spec


def load_weights(model_dir: str | Path, device: torch.device | str = "cpu") -> dict:
    """``model.pt`` of a finished model directory, checked against the SHA-256 its ``summary.json``
    records (:mod:`medkd.integrity`): an altered or truncated checkpoint is an error naming the file."""
    from medkd.integrity import check_sha256, reading

    model_dir = Path(model_dir)
    summary_path = model_dir / "summary.json"
    if summary_path.exists():
        summary = read_json(summary_path)
        check_sha256(model_dir / "model.pt", summary.get("model_sha256"), str(summary_path))
    with reading(model_dir / "model.pt", "checkpoint"):
        return torch.load(model_dir / "model.pt", map_location=device, weights_only=True)


def to_device(batch: dict, device: torch.device) -> dict:
    """Move every tensor of a (nested) batch dict to ``device``."""
    out = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = to_device(v, device)
        elif torch.is_tensor(v):
            out[k] = v.to(device, non_blocking=True)
        else:
            out[k] = v
    return out


def forward_model(model: nn.Module, batch: dict):
    """Call ``model`` on the batch keys it declares in ``input_keys`` (default: the image only)."""
    keys = getattr(model, "input_keys", ("image",))
    return model(*[batch[k] for k in keys])
