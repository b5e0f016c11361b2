"""Training data: the slices of the cases of one split, plus cached teacher outputs, held in memory or
streamed from the stores in batches.

Segmentation reads the canonical slice store (:mod:`medkd.data.store`); reconstruction and
super-resolution read the k-space store (:mod:`medkd.data.kspace`). A job's slice data is bounded by its
:class:`DataBudget` (run setting ``data_memory_mb``, default :data:`DEFAULT_DATA_MEMORY_MB`): a split (or a
teacher cache) whose arrays fit what is left of the budget is loaded into memory once and batches are taken
by indexing tensors, as fast as a plain PyTorch loop; a larger one stays on disk and every batch reads its
slices from the HDF5 file (both stores chunk one slice per chunk, so a batch reads exactly its slices). The
two modes give the same arrays for the same index (same dtypes, same order), so shuffling, batching and
the trained weights do not depend on the mode.

Batch keys (see :mod:`medkd.distill`): ``image`` (B, C, H, W) float32; ``target`` (B, H, W) int64 class
indices (segmentation) or (B, 1, H, W) float32 (reconstruction); ``kspace`` (B, H, W) complex64 and
``mask`` (B, H, W) float32 (undersampled reconstruction); ``cache`` {teacher: {key: tensor}};
``index`` (B,) int64 positions in the split.

With ``numpy=True`` the loaders return numpy arrays instead of tensors (same keys, shapes and dtypes
int64/float32), for stages that only compare arrays.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from medkd.resources import DEFAULT_DATA_MEMORY_MB  # the run setting's default lives with the job sizes

if TYPE_CHECKING:
    import torch

log = logging.getLogger("medkd.datasets")

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




class DataBudget:
    """The bytes of slice data a job may still load into memory, shared by its :func:`load_split` and
    :func:`attach_cache` calls (a training job: the training split, then validation, then the caches).

    ``mb`` None: no limit (everything in memory); 0: everything streamed.
    """

    def __init__(self, mb: float | None = DEFAULT_DATA_MEMORY_MB) -> None:
        self.left = math.inf if mb is None else float(mb) * 2**20

    def take(self, nbytes: float) -> bool:
        """Reserve ``nbytes`` if they fit what is left; whether they did."""
        if nbytes <= self.left:
            self.left -= nbytes
            return True
        return False


class _Reader:
    """Reads the arrays of given split positions from one HDF5 file (streaming mode).

    ``locations``: the HDF5 group path of each case; ``case_index``/``slice_ids``: per split position, the
    case (index into ``locations``) and the slice within it. ``read_key`` turns (group, key, sorted unique
    slice ids) into the array of those slices.
    """

    def __init__(self, path: str | Path, what: str, groups: list[str], case_index: np.ndarray,
                 slice_ids: np.ndarray, keys: list[str], read_key) -> None:
        import h5py

        self.path, self.what, self.groups, self.keys = Path(path), what, groups, keys
        self.case_index, self.slice_ids = case_index, slice_ids
        self._read_key = read_key
        self._fh = h5py.File(self.path, "r")

    def read(self, positions: np.ndarray, keys: list[str] | None = None) -> dict[str, np.ndarray]:
        """The arrays of split ``positions`` (in that order) for ``keys`` (default all)."""
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        keys = self.keys if keys is None else keys
        cases = self.case_index[positions]
        parts: dict[str, np.ndarray] = {}
        for c in np.unique(cases):
            where = np.flatnonzero(cases == c)
            wanted, inverse = np.unique(self.slice_ids[positions[where]], return_inverse=True)
            grp = self._fh[self.groups[c]]
            for key in keys:
                try:
                    block = self._read_key(grp, key, wanted)
                except (OSError, KeyError) as exc:
                    raise ValueError(f"{self.path}: cannot read {key!r} of {self.groups[c]} "
                                     f"({self.what}: {exc})") from exc
                if key not in parts:
                    parts[key] = np.empty((len(positions),) + block.shape[1:], dtype=block.dtype)
                parts[key][where] = block[inverse]
        return parts

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


@dataclass
class SliceData:
    """The slices of a list of cases. ``case_ids[i]``/``slice_ids[i]`` locate slice i.

    In memory, ``tensors`` holds every array; streamed (:attr:`streaming`), ``reader`` reads the slices of
    each batch from the store and ``tensors`` is empty. Teacher caches (``cache``) are tensors or readers
    in the same way. Use :meth:`batch` and :meth:`take`, which work in both modes.
    """

    tensors: dict[str, "torch.Tensor | np.ndarray"]
    case_ids: list[str]
    slice_ids: list[int]
    spacing: dict[str, tuple] = field(default_factory=dict)
    cache: dict[str, "dict[str, torch.Tensor] | _Reader"] = field(default_factory=dict)
    reader: _Reader | None = None
    numpy: bool = False

    def __len__(self) -> int:
        return len(self.case_ids)

    @property
    def streaming(self) -> bool:
        return self.reader is not None

    def _convert(self, arrays: dict[str, np.ndarray]) -> dict:
        return arrays if self.numpy else _as_tensors(arrays)

    def take(self, key: str, positions) -> "torch.Tensor | np.ndarray":
        """Array ``key`` (``image``, ``target``, ...) at split ``positions``, as a batch would hold it."""
        if self.reader is None:
            return self.tensors[key][positions]
        return self._convert(self.reader.read(_positions(positions), [key]))[key]

    def batch(self, index: "torch.Tensor") -> dict:
        if self.reader is None:
            out = {k: v[index] for k, v in self.tensors.items()}
        else:
            out = self._convert(self.reader.read(_positions(index)))
        out["index"] = index
        out["cache"] = {}
        for t, c in self.cache.items():
            if isinstance(c, _Reader):
                import torch

                out["cache"][t] = {k: torch.from_numpy(v).float() for k, v in c.read(_positions(index)).items()}
            else:
                out["cache"][t] = {k: v[index] for k, v in c.items()}
        return out

    def case_slices(self) -> dict[str, np.ndarray]:
        """case id -> positions of its slices (in stored order)."""
        out: dict[str, list[int]] = {}
        for i, cid in enumerate(self.case_ids):
            out.setdefault(cid, []).append(i)
        return {k: np.asarray(v) for k, v in out.items()}

    def close(self) -> None:
        """Close the files of a streamed split and of its streamed caches."""
        for r in [self.reader, *self.cache.values()]:
            if isinstance(r, _Reader):
                r.close()


def _positions(index) -> np.ndarray:
    if hasattr(index, "numpy"):
        index = index.numpy()
    return np.asarray(index, dtype=np.int64).reshape(-1)


def _locations(counts: list[tuple[str, int]]) -> tuple[list[str], list[int], np.ndarray, np.ndarray]:
    """(case id, slices) per case -> case_ids, slice_ids per position, case index and slice id arrays."""
    case_ids = [cid for cid, n in counts for _ in range(n)]
    slice_ids = [k for _, n in counts for k in range(n)]
    case_index = np.repeat(np.arange(len(counts)), [n for _, n in counts]).astype(np.int64)
    return case_ids, slice_ids, case_index, np.asarray(slice_ids, dtype=np.int64)


def segmentation_bytes(n_slices: int, n_channels: int, height: int, width: int) -> int:
    """Bytes in memory of ``n_slices`` segmentation slices: image float32 (C, H, W) + target int64 (H, W)."""
    return int(n_slices) * height * width * (4 * n_channels + 8)


def reconstruction_bytes(n_slices: int, height: int, width: int, undersampled: bool) -> int:
    """Bytes in memory of ``n_slices`` reconstruction slices: image and target float32, plus k-space
    complex64 and mask float32 for undersampling stores."""
    return int(n_slices) * height * width * (8 + (12 if undersampled else 0))


def load_segmentation(store_path: str | Path, cases: list[str], channels: list[int], classes: dict,
                      numpy: bool = False, budget: DataBudget | None = None) -> SliceData:
    """Slices of ``cases`` from a slice store: ``image`` (N, len(channels), H, W), ``target`` (N, H, W).

    Every case's channels and label values are checked before the first batch in both modes (a streamed
    split reads each case's label once for it).
    """
    from medkd.data.store import SliceStore

    table = class_lookup(classes)
    channels = list(channels)
    counts, spacing = [], {}
    with SliceStore(store_path) as store:
        missing = sorted(set(cases) - set(store.case_ids))
        if missing:
            raise ValueError(f"{store_path}: cases {missing} are not in the slice store")
        shape = None
        for cid in cases:
            image = store.dataset(cid, "image")
            n_ch = image.shape[1]
            if max(channels) >= n_ch:
                raise ValueError(f"{store_path}: case {cid} has {n_ch} channels, config asks for {channels}")
            if not store.has(cid, "label"):
                raise ValueError(f"{store_path}: case {cid} has no label")
            shape = image.shape[2:]
            counts.append((cid, int(image.shape[0])))
            spacing[cid] = tuple(store.case_spacing(cid))
        n = sum(c for _, c in counts)
        h, w = shape if shape is not None else (0, 0)
        in_memory = (budget or DataBudget(None)).take(segmentation_bytes(n, len(channels), h, w))
        case_ids, slice_ids, case_index, slice_arr = _locations(counts)
        if in_memory:
            image_all = np.empty((n, len(channels), h, w), dtype=np.float32)
            target_all = np.empty((n, h, w), dtype=np.int64)
            at = 0
            for cid, k in counts:  # one case at a time into the preallocated arrays
                image_all[at : at + k] = store.dataset(cid, "image")[()][:, channels]
                target_all[at : at + k] = _mapped(store.dataset(cid, "label")[()], table, classes, store_path, cid)
                at += k
            arrays = {"image": image_all, "target": target_all}
            return SliceData(tensors=arrays if numpy else _as_tensors(arrays), case_ids=case_ids,
                             slice_ids=slice_ids, spacing=spacing, numpy=numpy)
        for cid, _ in counts:  # the label check of the in-memory path, one case at a time
            _mapped(store.dataset(cid, "label")[()], table, classes, store_path, cid)

    def read_key(grp, key, wanted):
        if key == "image":
            return grp["image"][wanted.tolist()][:, channels].astype(np.float32, copy=False)
        return table[grp["label"][wanted.tolist()].astype(np.int64)]

    reader = _Reader(store_path, "slice store", [f"cases/{cid}" for cid, _ in counts], case_index, slice_arr,
                     ["image", "target"], read_key)
    log.info("%s: %d slices streamed from disk (over the data memory budget)", store_path, n)
    return SliceData(tensors={}, case_ids=case_ids, slice_ids=slice_ids, spacing=spacing, reader=reader,
                     numpy=numpy)


def _mapped(label: np.ndarray, table: np.ndarray, classes: dict, store_path, cid) -> np.ndarray:
    mapped = table[label.astype(np.int64)]
    if (mapped < 0).any():
        bad = sorted(set(np.unique(label[mapped < 0]).tolist()))
        raise ValueError(f"{store_path}:{cid}: label values {bad} are not assigned to any class of {list(classes)}")
    return mapped


def _as_tensors(arrays: dict[str, np.ndarray]) -> dict:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}


def load_reconstruction(kspace_path: str | Path, cases: list[str], numpy: bool = False,
                        budget: DataBudget | None = None) -> SliceData:
    """Slices of ``cases`` from a k-space store: ``image``/``target`` (N, 1, H, W); ``kspace``/``mask``
    (N, H, W) for undersampling stores (absent for super-resolution stores)."""
    from medkd.data.kspace import KspaceStore

    counts, spacing = [], {}
    with KspaceStore(kspace_path) as store:
        missing = sorted(set(cases) - set(store.case_ids))
        if missing:
            raise ValueError(f"{kspace_path}: cases {missing} are not in the k-space store")
        undersampled, shape = False, (0, 0)
        for cid in cases:
            target = store.dataset(cid, "target")
            undersampled = store.has(cid, "kspace")
            shape = target.shape[1:]
            counts.append((cid, int(target.shape[0])))
            spacing[cid] = tuple(store.case_spacing(cid))
        n = sum(c for _, c in counts)
        in_memory = (budget or DataBudget(None)).take(reconstruction_bytes(n, *shape, undersampled))
        case_ids, slice_ids, case_index, slice_arr = _locations(counts)
        keys = ["image", "target"] + (["kspace", "mask"] if undersampled else [])
        if in_memory:
            parts: dict[str, list] = {k: [] for k in keys}
            for cid, _ in counts:
                case = store.read_case(cid)
                for k in keys:
                    parts[k].append(_recon_array(case, k, np.arange(case["target"].shape[0])))
            arrays = {k: np.concatenate(v) for k, v in parts.items()}
            return SliceData(tensors=arrays if numpy else _as_tensors(arrays), case_ids=case_ids,
                             slice_ids=slice_ids, spacing=spacing, numpy=numpy)

    def read_key(grp, key, wanted):
        rows = wanted.tolist()
        if key == "mask":
            return _recon_array({"mask": grp["mask"][()]}, key, wanted)
        return _recon_array({key: grp[key][rows]}, key, np.arange(len(rows)))

    reader = _Reader(kspace_path, "k-space store", [f"cases/{cid}" for cid, _ in counts], case_index, slice_arr,
                     keys, read_key)
    log.info("%s: %d slices streamed from disk (over the data memory budget)", kspace_path, n)
    return SliceData(tensors={}, case_ids=case_ids, slice_ids=slice_ids, spacing=spacing, reader=reader,
                     numpy=numpy)


def _recon_array(case: dict, key: str, rows: np.ndarray) -> np.ndarray:
    """Array ``key`` of the k-space store case ``case`` for slice ``rows``, as the batches hold it."""
    if key in ("image", "target"):
        return case[key][rows][:, None].astype(np.float32)
    if key == "kspace":
        return case[key][rows]
    return np.broadcast_to(case["mask"], (len(rows),) + case["mask"].shape).astype(np.float32)


def attach_cache(data: SliceData, teacher: str, cache_path: str | Path, keys: list[str],
                 spec_hash: str | None = None, budget: DataBudget | None = None) -> None:
    """Add a teacher's cached maps (``keys``, e.g. logits/entropy) aligned with ``data``'s slices: in memory
    when they fit ``budget`` (float32 tensors), else read with every batch.

    Raises:
        ValueError: a case of ``data`` that the cache does not cover, or a missing key.
    """
    import h5py
    import torch

    from medkd.integrity import corrupt, reading

    runs = _case_runs(data)
    with reading(cache_path, "teacher cache"), h5py.File(cache_path, "r") as fh:
        recorded = fh.attrs.get("spec_hash")
        if spec_hash is not None and recorded != spec_hash:
            raise corrupt(cache_path, f"teacher cache was written for spec hash {recorded!r}, but teacher "
                                      f"{teacher!r} now has spec hash {spec_hash!r}")
        nbytes = 0
        for cid, positions in runs:
            grp = fh.get(f"cases/{cid}")
            if grp is None:
                raise ValueError(f"{cache_path}: teacher cache has no case {cid!r}")
            for k in keys:
                if k not in grp:
                    raise ValueError(f"{cache_path}: case {cid!r} has no cached {k!r} (has {list(grp)})")
                per_slice = int(np.prod(grp[k].shape[1:]))
                nbytes += 4 * per_slice * len(positions)
        if (budget or DataBudget(None)).take(nbytes):
            per_key: dict[str, list[np.ndarray]] = {k: [] for k in keys}
            for cid, positions in runs:
                grp = fh[f"cases/{cid}"]
                for k in keys:
                    per_key[k].append(grp[k][()][[data.slice_ids[i] for i in positions]])
            data.cache[teacher] = {k: torch.from_numpy(np.concatenate(v)).float() for k, v in per_key.items()}
            return
    case_of = {cid: c for c, (cid, _) in enumerate(runs)}
    case_index = np.asarray([case_of[cid] for cid in data.case_ids], dtype=np.int64)
    data.cache[teacher] = _Reader(cache_path, "teacher cache", [f"cases/{cid}" for cid, _ in runs], case_index,
                                  np.asarray(data.slice_ids, dtype=np.int64), list(keys),
                                  lambda grp, key, wanted: grp[key][wanted.tolist()])
    log.info("teacher cache %s: streamed from disk (over the data memory budget)", cache_path)


def _case_runs(data: SliceData):
    """(case id, positions) in order of first appearance; positions are contiguous by construction."""
    runs: list[tuple[str, list[int]]] = []
    for i, cid in enumerate(data.case_ids):
        if not runs or runs[-1][0] != cid:
            runs.append((cid, []))
        runs[-1][1].append(i)
    return runs


def load_split(spec, store: str | Path, split_path: str | Path, split_name: str, numpy: bool = False,
               budget: DataBudget | None = None) -> SliceData:
    """The slices of split (or subset) ``split_name`` of the split file, for a :class:`ModelSpec`:
    labels mapped to the spec's classes (segmentation) or k-space inputs (reconstruction); in memory when
    they fit ``budget`` (default: no limit), streamed otherwise."""
    from medkd.data.splits import cases_for, read_split

    from medkd.integrity import reading

    cases = cases_for(read_split(split_path), split_name)
    with reading(store, "slice store" if spec.is_segmentation else "k-space store"):
        if spec.is_segmentation:
            return load_segmentation(store, cases, list(spec.channels),
                                     {k: list(v) for k, v in spec.classes.items()}, numpy=numpy, budget=budget)
        return load_reconstruction(store, cases, numpy=numpy, budget=budget)
