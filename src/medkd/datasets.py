"""In-memory training data: the slices of the cases of one split, as tensors, plus cached teacher outputs.

Segmentation reads the canonical slice store (:mod:`medkd.data.store`); reconstruction and
super-resolution read the k-space store (:mod:`medkd.data.kspace`). Everything of a split is loaded
into memory once (the embedded default is a few MB; a paper-scale 2-D dataset a few GB), and batches
are taken by indexing tensors, which keeps the engine as fast as a plain PyTorch loop.

Batch keys (see :mod:`medkd.distill`): ``image`` (B, C, H, W) float32; ``target`` (B, H, W) int64 class
indices (segmentation) or (B, 1, H, W) float32 (reconstruction); ``kspace`` (B, H, W) complex64 and
``mask`` (B, H, W) float32 (undersampled reconstruction); ``cache`` {teacher: {key: tensor}};
``index`` (B,) int64 positions in the split.

With ``numpy=True`` the loaders return numpy arrays instead of tensors (same keys, shapes and dtypes
int64/float32), for stages that only compare arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

# torch is imported where tensors are made, so that numpy-only readers (the evaluate stage) do not pay
# its start-up cost.


def class_lookup(classes: dict[str, list[int]]) -> np.ndarray:
    """A 256-entry table mapping source label values to class indices (order of ``classes``).

    Unlisted values map to -1, which :func:`map_labels` rejects.
    """
    table = np.full(256, -1, dtype=np.int64)
    for index, values in enumerate(classes.values()):
        for v in values:
            if table[v] != -1:
                raise ValueError(f"label value {v} is listed in two classes")
            table[v] = index
    return table


def map_labels(label: np.ndarray, classes: dict[str, list[int]], where: str = "") -> np.ndarray:
    """Source label values -> class indices (int64). Raises ValueError for an unlisted value."""
    table = class_lookup(classes)
    mapped = table[label.astype(np.int64)]
    if (mapped < 0).any():
        bad = sorted(set(np.unique(label[mapped < 0]).tolist()))
        raise ValueError(f"{where}: label values {bad} are not assigned to any class of {list(classes)}")
    return mapped


@dataclass
class SliceData:
    """The slices of a list of cases, stacked. ``case_ids[i]``/``slice_ids[i]`` locate slice i."""

    tensors: dict[str, "torch.Tensor | np.ndarray"]
    case_ids: list[str]
    slice_ids: list[int]
    spacing: dict[str, tuple] = field(default_factory=dict)
    cache: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.case_ids)

    def batch(self, index: torch.Tensor) -> dict:
        out = {k: v[index] for k, v in self.tensors.items()}
        out["index"] = index
        out["cache"] = {t: {k: v[index] for k, v in d.items()} for t, d in self.cache.items()}
        return out

    def case_slices(self) -> dict[str, np.ndarray]:
        """case id -> positions of its slices (in stored order)."""
        out: dict[str, list[int]] = {}
        for i, cid in enumerate(self.case_ids):
            out.setdefault(cid, []).append(i)
        return {k: np.asarray(v) for k, v in out.items()}


def load_segmentation(store_path: str | Path, cases: list[str], channels: list[int], classes: dict,
                      numpy: bool = False) -> SliceData:
    """Slices of ``cases`` from a slice store: ``image`` (N, len(channels), H, W), ``target`` (N, H, W)."""
    from medkd.data.store import SliceStore

    images, targets, case_ids, slice_ids, spacing = [], [], [], [], {}
    with SliceStore(store_path) as store:
        missing = sorted(set(cases) - set(store.case_ids))
        if missing:
            raise ValueError(f"{store_path}: cases {missing} are not in the slice store")
        for cid in cases:
            case = store.read_case(cid)
            n_ch = case.image.shape[1]
            if max(channels) >= n_ch:
                raise ValueError(f"{store_path}: case {cid} has {n_ch} channels, config asks for {channels}")
            if case.label is None:
                raise ValueError(f"{store_path}: case {cid} has no label")
            images.append(case.image[:, channels])
            targets.append(map_labels(case.label, classes, f"{store_path}:{cid}"))
            case_ids += [cid] * case.image.shape[0]
            slice_ids += list(range(case.image.shape[0]))
            spacing[cid] = tuple(case.spacing)
    arrays = {"image": np.concatenate(images).astype(np.float32), "target": np.concatenate(targets).astype(np.int64)}
    return SliceData(
        tensors=arrays if numpy else _as_tensors(arrays),
        case_ids=case_ids,
        slice_ids=slice_ids,
        spacing=spacing,
    )


def _as_tensors(arrays: dict[str, np.ndarray]) -> dict:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def load_reconstruction(kspace_path: str | Path, cases: list[str], numpy: bool = False) -> SliceData:
    """Slices of ``cases`` from a k-space store: ``image``/``target`` (N, 1, H, W); ``kspace``/``mask``
    (N, H, W) for undersampling stores (absent for super-resolution stores)."""
    from medkd.data.kspace import KspaceStore

    parts: dict[str, list] = {}
    case_ids, slice_ids, spacing = [], [], {}
    with KspaceStore(kspace_path) as store:
        missing = sorted(set(cases) - set(store.case_ids))
        if missing:
            raise ValueError(f"{kspace_path}: cases {missing} are not in the k-space store")
        for cid in cases:
            case = store.read_case(cid)
            n = case["target"].shape[0]
            parts.setdefault("image", []).append(case["image"][:, None])
            parts.setdefault("target", []).append(case["target"][:, None])
            if "kspace" in case:
                parts.setdefault("kspace", []).append(case["kspace"])
                parts.setdefault("mask", []).append(np.broadcast_to(case["mask"], case["kspace"].shape))
            case_ids += [cid] * n
            slice_ids += list(range(n))
            spacing[cid] = tuple(case.get("spacing", (1.0, 1.0, 1.0)))
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    for k in ("image", "target", "mask"):
        if k in arrays:
            arrays[k] = arrays[k].astype(np.float32)
    return SliceData(tensors=arrays if numpy else _as_tensors(arrays), case_ids=case_ids, slice_ids=slice_ids, spacing=spacing)


def attach_cache(data: SliceData, teacher: str, cache_path: str | Path, keys: list[str],
                 spec_hash: str | None = None) -> None:
    """Add a teacher's cached maps (``keys``, e.g. logits/entropy) aligned with ``data``'s slices.

    Raises:
        ValueError: a case of ``data`` that the cache does not cover, or a missing key.
    """
    import h5py
    import torch

    from medkd.integrity import corrupt, reading

    per_key: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    with reading(cache_path, "teacher cache"), h5py.File(cache_path, "r") as fh:
        recorded = fh.attrs.get("spec_hash")
        if spec_hash is not None and recorded != spec_hash:
            raise corrupt(cache_path, f"teacher cache was written for spec hash {recorded!r}, but teacher "
                                      f"{teacher!r} now has spec hash {spec_hash!r}")
        for cid, positions in _case_runs(data):
            grp = fh.get(f"cases/{cid}")
            if grp is None:
                raise ValueError(f"{cache_path}: teacher cache has no case {cid!r}")
            for k in keys:
                if k not in grp:
                    raise ValueError(f"{cache_path}: case {cid!r} has no cached {k!r} (has {list(grp)})")
                arr = grp[k][()]
                per_key[k].append(arr[[data.slice_ids[i] for i in positions]])
    data.cache[teacher] = {k: torch.from_numpy(np.concatenate(v)).float() for k, v in per_key.items()}


def _case_runs(data: SliceData):
    """(case id, positions) in order of first appearance; positions are contiguous by construction."""
    runs: list[tuple[str, list[int]]] = []
    for i, cid in enumerate(data.case_ids):
        if not runs or runs[-1][0] != cid:
            runs.append((cid, []))
        runs[-1][1].append(i)
    return runs


def load_split(spec, store: str | Path, split_path: str | Path, split_name: str, numpy: bool = False) -> SliceData:
    """The slices of split (or subset) ``split_name`` of the split file, for a :class:`ModelSpec`:
    labels mapped to the spec's classes (segmentation) or k-space inputs (reconstruction)."""
    from medkd.data.splits import cases_for, read_split

    from medkd.integrity import reading

    cases = cases_for(read_split(split_path), split_name)
    with reading(store, "slice store" if spec.is_segmentation else "k-space store"):
        if spec.is_segmentation:
            return load_segmentation(store, cases, list(spec.channels),
                                     {k: list(v) for k, v in spec.classes.items()}, numpy=numpy)
        return load_reconstruction(store, cases, numpy=numpy)
