"""Case-level, seeded, persisted train/val/test splits plus nested student subsets.

Splits are made over *cases* (volumes, patients), never slices, so no slice of a test volume is seen in
training. As in nnU-Net (``splits_final.json`` from ``KFold(shuffle=True, random_state=12345)`` over the
sorted case ids), the split is computed once from the sorted ids and a seed, written to JSON, and every
later stage reads that file.

A split file (``results/splits/<dataset>.json``) looks like::

    {"seed": 0, "fixed": false, "n_cases": 10,
     "fractions": {"train": 0.6, "val": 0.2, "test": 0.2},
     "splits": {"train": [...], "val": [...], "test": [...]},
     "subsets": {"student_half": {"of": "train", "fraction": 0.5, "cases": [...]}}}

Every list is sorted. Subsets serve papers whose students see only part of the teacher's training data
(MTMS: the student gets 50 % of the teacher's training cases; the original split is unknown, so ours is
seeded and documented here).
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from medkd.io import read_json, write_json

log = logging.getLogger(__name__)

DEFAULT_FRACTIONS = {"train": 0.6, "val": 0.2, "test": 0.2}
_EPS = 1e-9  # guards floor(f * n) against binary rounding (0.29 * 100 = 28.999999999999996)


def make_split(
    case_ids: Iterable[str],
    seed: int,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    subsets: Mapping[str, Mapping] | None = None,
    fixed: Mapping[str, Iterable[str]] | None = None,
) -> dict:
    """Make a seeded case-level split.

    Counts: each split other than ``train`` gets ``floor(f * n)`` cases (at least 1 when ``f > 0``); ``train``
    gets the remainder, so every case is assigned even when the fractions sum to less than 1. Assignment
    takes consecutive runs of ``numpy.random.default_rng(seed).permutation(sorted(case_ids))``: the other
    splits in sorted name order first, then train. Example: n = 10, {train 0.6, val 0.2, test 0.2} ->
    test 2, val 2, train 10 - 4 = 6.

    Subsets: ``{"student_half": {"of": "train", "fraction": 0.5}}`` takes the first
    ``max(1, floor(fraction * n_parent + 0.5))`` cases (round half up) of a permutation of the sorted parent
    cases. The permutation depends only on ``seed`` and the parent's name, so subsets of one parent with
    smaller fractions are always contained in those with larger ones. ``of`` may name a split or another
    subset.

    Args:
        case_ids: all case ids of the dataset (unique).
        seed: the split seed.
        fractions: split name -> fraction in [0, 1]; must contain ``train``; sum at most 1.
        subsets: subset name -> ``{"of": parent name, "fraction": (0, 1]}``.
        fixed: an explicit split {name: [case ids]} used instead of shuffling (papers that ship their
            split, e.g. P-CD's BUSI 680/100 JSONs). Cases of ``case_ids`` not listed are left out (logged).

    Returns:
        ``{"seed", "fixed" (bool), "fractions" (the requested ones, or for ``fixed`` the realised
        len/n), "n_cases", "splits": {name: sorted ids}, "subsets": {name: {"of", "fraction", "cases"}}}``.

    Raises:
        ValueError: duplicate case ids, bad fractions, more non-empty splits than cases, a bad subset
            (unknown parent, name clash, fraction outside (0, 1], cycle), or a ``fixed`` split naming an
            unknown case or listing a case twice.
    """
    ids = sorted(str(c) for c in case_ids)
    _check_unique(ids, "case_ids")
    n = len(ids)
    if fixed is not None:
        splits = _fixed_splits(fixed, ids)
        used_fractions = {k: (len(v) / n if n else 0.0) for k, v in splits.items()}
    else:
        used_fractions = _checked_fractions(fractions)
        splits = _seeded_splits(ids, seed, used_fractions)
    result = {
        "seed": int(seed),
        "fixed": fixed is not None,
        "fractions": used_fractions,
        "n_cases": n,
        "splits": splits,
        "subsets": _make_subsets(splits, dict(subsets or {}), seed),
    }
    validate_split(result, ids)
    return result


def _check_unique(ids: list[str], what: str) -> None:
    dupes = sorted(c for c, k in Counter(ids).items() if k > 1)
    if dupes:
        raise ValueError(f"{what}: duplicate case ids {dupes}")


def _checked_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    out = {str(k): float(v) for k, v in fractions.items()}
    if "train" not in out:
        raise ValueError(f"split fractions must include 'train' (it takes the remainder), got {sorted(out)}")
    bad = {k: v for k, v in out.items() if not 0.0 <= v <= 1.0}
    if bad:
        raise ValueError(f"split fractions must lie in [0, 1], got {bad}")
    if sum(out.values()) > 1.0 + 1e-6:
        raise ValueError(f"split fractions sum to {sum(out.values()):.6g} > 1: {out}")
    return out


def _split_counts(n: int, fractions: dict[str, float]) -> dict[str, int]:
    others = sorted(k for k in fractions if k != "train")
    needed = [k for k, f in fractions.items() if f > 0]
    if len(needed) > n:
        raise ValueError(f"cannot give each of the splits {sorted(needed)} (non-zero fraction) at least one "
                         f"case: only {n} cases")
    counts = {k: math.floor(fractions[k] * n + _EPS) for k in others}
    for k in others:
        if fractions[k] > 0 and counts[k] == 0:
            counts[k] = 1
    counts["train"] = n - sum(counts.values())
    train_min = 1 if fractions["train"] > 0 else 0
    while counts["train"] < train_min:
        # the minimum of 1 per split can overshoot n (n = 4, {a: 0.9, b: 0.05, c: 0.05, train: 0} gives
        # 3 + 1 + 1); take cases back from the largest other split, which has > 1 since len(needed) <= n
        largest = max(others, key=lambda k: (counts[k], k))
        counts[largest] -= 1
        counts["train"] += 1
    return counts


def _seeded_splits(ids: list[str], seed: int, fractions: dict[str, float]) -> dict[str, list[str]]:
    counts = _split_counts(len(ids), fractions)
    order = [str(c) for c in np.random.default_rng(seed).permutation(np.array(ids, dtype=object))]
    splits: dict[str, list[str]] = {}
    start = 0
    for name in sorted(k for k in counts if k != "train") + ["train"]:
        splits[name] = sorted(order[start:start + counts[name]])
        start += counts[name]
    return splits


def _fixed_splits(fixed: Mapping[str, Iterable[str]], ids: list[str]) -> dict[str, list[str]]:
    splits = {str(k): sorted(str(c) for c in v) for k, v in fixed.items()}
    if not splits:
        raise ValueError("fixed split is empty")
    known = set(ids)
    owner: dict[str, str] = {}
    for name, cases in splits.items():
        _check_unique(cases, f"fixed split {name!r}")
        unknown = sorted(set(cases) - known)
        if unknown:
            raise ValueError(f"fixed split {name!r} names cases that are not in the dataset: {unknown}")
        for c in cases:
            if c in owner:
                raise ValueError(f"fixed split: case {c!r} is in both {owner[c]!r} and {name!r}")
            owner[c] = name
    unused = sorted(known - set(owner))
    if unused:
        log.warning("fixed split leaves %d of %d cases unused: %s", len(unused), len(ids), unused[:10])
    return splits


def _make_subsets(splits: dict[str, list[str]], specs: dict[str, Mapping], seed: int) -> dict[str, dict]:
    clash = sorted(set(specs) & set(splits))
    if clash:
        raise ValueError(f"subset names {clash} clash with split names")
    out: dict[str, dict] = {}

    def parent_cases(name: str, chain: tuple[str, ...]) -> list[str]:
        if name in splits:
            return splits[name]
        if name not in specs:
            raise ValueError(f"subset {chain[-1]!r}: parent {name!r} is neither a split {sorted(splits)} "
                             f"nor a subset {sorted(specs)}")
        if name in chain:
            raise ValueError(f"subsets form a cycle: {' -> '.join(chain + (name,))}")
        resolve(name, chain)
        return out[name]["cases"]

    def resolve(name: str, chain: tuple[str, ...] = ()) -> None:
        if name in out:
            return
        spec = specs[name]
        if set(spec) - {"of", "fraction"} or "of" not in spec or "fraction" not in spec:
            raise ValueError(f"subset {name!r} must be {{'of': parent, 'fraction': f}}, got {dict(spec)}")
        fraction = float(spec["fraction"])
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"subset {name!r}: fraction must lie in (0, 1], got {fraction}")
        parent = str(spec["of"])
        cases = parent_cases(parent, chain + (name,))
        if not cases:
            raise ValueError(f"subset {name!r}: parent {parent!r} is empty")
        k = max(1, math.floor(fraction * len(cases) + 0.5))
        order = _parent_permutation(cases, seed, parent)
        out[name] = {"of": parent, "fraction": fraction, "cases": sorted(order[:k])}

    for subset_name in sorted(specs):
        resolve(subset_name)
    return out


def _parent_permutation(cases: list[str], seed: int, parent: str) -> list[str]:
    """One permutation per (seed, parent): nested subsets of a parent are prefixes of it."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, *parent.encode()])
    return [str(c) for c in rng.permutation(np.array(sorted(cases), dtype=object))]


def validate_split(split: Mapping, case_ids: Iterable[str] | None = None) -> None:
    """Check a split's consistency.

    Args:
        split: a split dict as made by :func:`make_split` (or read from JSON).
        case_ids: if given, every case of the split must be one of these.

    Raises:
        ValueError: malformed structure, a case listed twice in one split or in two splits, a subset with
            an unknown parent or a case outside its parent, or a case not in ``case_ids``.
    """
    splits = split.get("splits") if isinstance(split, Mapping) else None
    if not isinstance(splits, Mapping) or not all(isinstance(v, list) for v in splits.values()):
        raise ValueError("split must have 'splits': {name: [case ids]}")
    owner: dict[str, str] = {}
    for name, cases in splits.items():
        for c in cases:
            if c in owner:
                where = "twice in" if owner[c] == name else f"in both {owner[c]!r} and"
                raise ValueError(f"case {c!r} is {where} split {name!r}")
            owner[c] = name
    subsets = split.get("subsets", {}) or {}
    if not isinstance(subsets, Mapping):
        raise ValueError("split 'subsets' must be a mapping")
    clash = sorted(set(subsets) & set(splits))
    if clash:
        raise ValueError(f"subset names {clash} clash with split names")
    for name, sub in subsets.items():
        if not isinstance(sub, Mapping) or "of" not in sub or not isinstance(sub.get("cases"), list):
            raise ValueError(f"subset {name!r} must have 'of' and 'cases'")
        parent = sub["of"]
        if parent in splits:
            parent_set = set(splits[parent])
        elif parent in subsets and parent != name:
            parent_set = set(subsets[parent].get("cases", []))
        else:
            raise ValueError(f"subset {name!r}: unknown parent {parent!r}")
        if len(set(sub["cases"])) != len(sub["cases"]):
            raise ValueError(f"subset {name!r} lists a case twice")
        outside = sorted(set(sub["cases"]) - parent_set)
        if outside:
            raise ValueError(f"subset {name!r} has cases outside its parent {parent!r}: {outside}")
    if case_ids is not None:
        unknown = sorted(set(owner) - {str(c) for c in case_ids})
        if unknown:
            raise ValueError(f"split names cases that are not in the dataset: {unknown}")


def write_split(split: Mapping, path: str | Path) -> None:
    """Validate ``split`` and write it atomically as indented, key-sorted JSON."""
    validate_split(split)
    write_json(path, split)


def read_split(path: str | Path) -> dict:
    """Read and validate a split file.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not valid JSON or not a valid split (message names the file).
    """
    from medkd.integrity import CorruptFileError, corrupt

    try:
        split = read_json(path)
    except CorruptFileError:
        raise
    except ValueError as exc:  # json.JSONDecodeError and UnicodeDecodeError
        raise corrupt(path, f"not a valid JSON split file ({exc})") from exc
    try:
        validate_split(split)
    except ValueError as exc:
        raise corrupt(path, f"not a valid split ({exc})") from exc
    return split


def cases_for(split: Mapping, name: str) -> list[str]:
    """The sorted case ids of a split (``train``/``val``/``test``) or of a subset name.

    Raises:
        ValueError: ``name`` is neither a split nor a subset (the message lists both).
    """
    splits = split["splits"]
    subsets = split.get("subsets", {}) or {}
    if name in splits:
        return list(splits[name])
    if name in subsets:
        return list(subsets[name]["cases"])
    raise ValueError(f"unknown split or subset {name!r}: splits {sorted(splits)}, subsets {sorted(subsets)}")
