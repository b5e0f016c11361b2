"""What every stage that runs a network shares: run settings, devices, precision, building and loading models.

Run settings (device, threads, memory layout, cuDNN switches) come from the rule's command line, never from
the hashed spec; they are recorded in each job's ``env.json``. The arithmetic precision is the other way
round: ``train.precision`` is part of the recipe (spec), because bf16 or fp16 autocast changes the numbers.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn

from medkd.resources import DEFAULT_DATA_MEMORY_MB
from medkd.io import read_json
from medkd.models import build_model
from medkd.spec import ModelSpec

log = logging.getLogger("medkd.runtime")

AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PHASES = ("train", "eval")
"""What a network is doing in a job, for :meth:`RunSettings.nhwc`: trained (and validated), or only run."""


@dataclass(frozen=True)
class RunSettings:
    """How (not what) a job runs.

    ``device``: auto | cpu | cuda; ``threads``: torch intra-op threads (Snakemake's ``{threads}``, so the CPUs
    SLURM allocated); ``channels_last``: NHWC layout of the model and of every 4-D batch tensor (True),
    the layout as built (False), or ``"auto"``: on CPU, NHWC in the phases (training, inference) an
    architecture declares in ``cpu_channels_last`` (measured faster there, ``benchmarks/memory_format.py``),
    as built otherwise and on CUDA (see :meth:`nhwc`);
    ``cudnn_benchmark``: cuDNN autotuning; ``deterministic``: deterministic algorithms only (wins over
    ``cudnn_benchmark``); ``data_memory_mb``: MB of slice data the job may hold in memory before it streams
    (:class:`medkd.datasets.DataBudget`; None: no limit). None of them is part of a spec hash.
    """

    device: str = "auto"
    threads: int = 1
    channels_last: bool | str = "auto"
    cudnn_benchmark: bool = False
    deterministic: bool = False
    data_memory_mb: float | None = DEFAULT_DATA_MEMORY_MB

    def apply(self) -> torch.device:
        """Set torch's threads and backend switches; return the resolved device."""
        torch.set_num_threads(int(self.threads))
        if self.deterministic:
            if self.cudnn_benchmark:
                log.warning("deterministic wins over cudnn_benchmark: cuDNN autotuning stays off")
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
            torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = bool(self.deterministic)
        torch.backends.cudnn.benchmark = bool(self.cudnn_benchmark and not self.deterministic)
        return resolve_device(self.device)

    def nhwc(self, model: nn.Module, phase: str = "eval") -> bool:
        """Whether ``model`` runs in NHWC (channels-last) layout in ``phase`` ("train": a training job,
        its validation included; "eval": inference, the corruption suite, caches, frozen teachers) under
        these settings: ``channels_last`` when it is a boolean; for ``"auto"``, on CPU, whether ``phase``
        is among the architecture's ``cpu_channels_last`` phases (:mod:`medkd.models`; default none), and
        never on CUDA.

        Raises:
            ValueError: ``channels_last`` is neither a boolean nor ``"auto"``, or an unknown phase.
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, not {phase!r}")
        if isinstance(self.channels_last, bool):
            return self.channels_last
        if self.channels_last != "auto":
            raise ValueError(f"channels_last must be true, false or 'auto', not {self.channels_last!r}")
        return resolve_device(self.device).type == "cpu" and phase in getattr(model, "cpu_channels_last", ())

    def prepare(self, model: nn.Module, phase: str = "eval") -> nn.Module:
        """The model in its memory layout in ``phase`` under these settings (:meth:`nhwc`)."""
        return model.to(memory_format=torch.channels_last) if self.nhwc(model, phase) else model

    def record(self) -> dict:
        return {**asdict(self), "threads": int(self.threads)}


MMAP_THRESHOLD_BYTES = 1 << 20
"""Allocations of at least this many bytes are served by ``mmap`` (:func:`fix_mmap_threshold`)."""


def fix_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Serve every allocation of ``nbytes`` or more by ``mmap``, so that it returns to the OS when freed
    (glibc's ``mallopt(M_MMAP_THRESHOLD)``, mallopt(3)). Returns whether the threshold was set.

    glibc raises that threshold by itself, up to 32 MiB, each time a large mmapped block is freed; from then on
    a job that allocates and frees batch-sized output tensors case after case serves them from its heap, which
    keeps growing. Measured on a cache job (128 x 128, 4 classes, batch 16, 64 slices per case): over 54 cases
    its RSS grew from 314 to 486 MiB, and ended at 274 MiB with the threshold at 1 MiB (407 at 16 MiB); over 20
    cases the peak was 301 MiB on a store of 6 slices per case, 422 MiB on the store of 64, 315 MiB with the
    threshold fixed. The price is a page fault per large allocation: the same cache job took 46 s instead of
    36 s, and training, whose memory does not grow (tests/integration/test_bounded_memory.py), ran 28 % slower
    in benchmarks/throughput.py, so only the stages that write outputs case by case call this
    (:func:`medkd.cache.build_cache`, :func:`medkd.infer.predict`). Only on glibc
    (``os.confstr("CS_GNU_LIBC_VERSION")``); elsewhere nothing is done. Setting it turns the dynamic adjustment
    off for the rest of the process (a job forked from the fork server is its own process)."""
    import ctypes

    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return False
    except (ValueError, OSError, AttributeError):  # not a glibc system
        return False
    m_mmap_threshold = -3  # <malloc.h>
    try:
        return bool(ctypes.CDLL(None).mallopt(m_mmap_threshold, int(nbytes)))
    except (OSError, AttributeError):
        return False


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu. Raises RuntimeError for cuda without a CUDA device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but no CUDA device is available")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    """The autocast context of a spec's ``train.precision`` on ``device`` (a no-op for fp32)."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; expected one of {sorted(AUTOCAST_DTYPES)}")
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """A GradScaler, enabled for fp16 only (bf16 has fp32's exponent range and needs no loss scaling)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def build_from_spec(spec: ModelSpec) -> nn.Module:
    """A freshly initialised network of ``spec.arch`` with the spec's channel counts and arch kwargs."""
    cin, cout = spec.in_out_channels()
    kwargs = {k: v for k, v in spec.arch_kwargs.items() if k != "out_channels"}
    return build_model(spec.arch, in_channels=cin, out_channels=cout, **kwargs)


def load_trained(model_dir: str | Path, device: torch.device | str = "cpu",
                 settings: RunSettings | None = None) -> tuple[nn.Module, ModelSpec]:
    """The best weights of a finished model directory (``model.pt``), in eval mode, and its spec
    (from ``config.json``), in the memory layout of ``settings``."""
    from medkd.integrity import reading

    model_dir = Path(model_dir)
    cfg = read_json(model_dir / "config.json")
    with reading(model_dir / "config.json", "model config"):
        spec = ModelSpec.from_dict(cfg["spec"])
    model = build_from_spec(spec)
    state = load_weights(model_dir, device)
    with reading(model_dir / "model.pt", "checkpoint"):
        model.load_state_dict(state)
    model = model.to(device).eval()
    return (settings.prepare(model) if settings is not None else model), spec


def load_weights(model_dir: str | Path, device: torch.device | str = "cpu") -> dict:
    """``model.pt`` of a finished model directory, checked against the SHA-256 its ``summary.json``
    records (:mod:`medkd.integrity`): an altered or truncated checkpoint is an error naming the file."""
    from medkd.integrity import check_digest, reading

    model_dir = Path(model_dir)
    summary_path = model_dir / "summary.json"
    if summary_path.exists():
        summary = read_json(summary_path)
        check_digest(model_dir / "model.pt", summary.get("model_sha256"), str(summary_path), "sha256")
    with reading(model_dir / "model.pt", "checkpoint"):
        return torch.load(model_dir / "model.pt", map_location=device, weights_only=True)


def class_indices(logits: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` scores -> ``(B, H, W)`` int64 index of the largest score over C (ties: the first,
    as ``argmax``). The same values as ``logits.argmax(1)``, computed over a channels-last copy: on CPU
    ``argmax`` along a strided dim is ~12x slower than along the contiguous last one (16.5 vs 1.3 ms for
    16 x 2 x 64 x 64, one thread), and every validation, inference and corruption-suite batch takes one."""
    return logits.movedim(1, -1).contiguous().argmax(-1)


def to_device(batch: dict, device: torch.device, channels_last: bool = False) -> dict:
    """Move every tensor of a (nested) batch dict to ``device``.

    For CUDA the host tensors are pinned first and copied with ``non_blocking=True``, so the copy overlaps
    the previous step's kernels. With ``channels_last`` every 4-D floating tensor (images, feature maps
    of the cache) is made NHWC.
    """
    pin = device.type == "cuda"
    out = {}
    for k, v in batch.items():
        if isinstance(v, dict):
            out[k] = to_device(v, device, channels_last)
        elif torch.is_tensor(v):
            if pin and v.device.type == "cpu" and not v.is_pinned():
                v = v.pin_memory()
            v = v.to(device, non_blocking=pin)
            if channels_last and v.dim() == 4 and v.is_floating_point():
                v = v.contiguous(memory_format=torch.channels_last)
            out[k] = v
        else:
            out[k] = v
    return out


def forward_model(model: nn.Module, batch: dict):
    """Call ``model`` on the batch keys it declares in ``input_keys`` (default: the image only)."""
    keys = getattr(model, "input_keys", ("image",))
    return model(*[batch[k] for k in keys])
