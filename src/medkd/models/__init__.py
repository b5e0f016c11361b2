"""Model registry.

Every architecture is an ``nn.Module`` registered with ``@MODELS.register("name")`` in a module of this
package. Conventions every model follows (the training engine relies on them):

* ``input_keys``: class attribute, the batch keys passed positionally to ``forward`` (default
  ``("image",)``). Reconstruction models with data consistency use ``("image", "kspace", "mask")``.
* ``forward`` returns either the main prediction tensor, or a dict whose ``"out"`` entry is the main
  prediction (other entries, e.g. ``"recon"`` for a multi-task head, are reachable as ``out:<key>``
  taps). Segmentation: logits ``(B, n_classes, H, W)`` (binary single-logit models ``(B, 1, H, W)``).
  Reconstruction: image ``(B, 1, H, W)``.
* Intermediate features for distillation are read with forward hooks by module path
  (:mod:`medkd.distill.taps`), so models never return features only for KD.
* Constructors take ``in_channels`` and ``out_channels`` keyword arguments plus their own
  architecture keywords from the config (``arch_kwargs``).
* ``cpu_channels_last``: optional class attribute, the phases (``"train"``: a training job, its
  validation included; ``"eval"``: inference, corruption suite, caches, frozen teachers) in which the
  architecture ran clearly faster in NHWC (channels-last) layout on CPU in ``benchmarks/memory_format.py``
  (one thread, x86-64 with oneDNN). The run setting ``channels_last: auto`` (the default) follows it on CPU
  (:meth:`medkd.runtime.RunSettings.nhwc`); default: no phase. A change of layout changes the rounding, so
  the numbers, not the method.
"""

from __future__ import annotations

import torch.nn as nn

from medkd.registry import Registry

MODELS = Registry("model", __name__)


def build_model(arch: str, in_channels: int, out_channels: int, **arch_kwargs) -> nn.Module:
    """Instantiate the registered architecture ``arch``."""
    return MODELS.get(arch)(in_channels=in_channels, out_channels=out_channels, **arch_kwargs)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (all, or only those with ``requires_grad``). Buffers are not counted."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
