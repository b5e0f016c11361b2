"""Slice store: round trip, validation errors, atomic writes and unreadable files."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from medkd.data.store import FORMAT_VERSION, SliceCase, SliceStore, write_store

ATTRS = {
    "dataset": "toy",
    "channel_names": ["T1", "T2"],
    "label_names": {"0": "background", "1": "organ"},
    "provenance": {"converter": "test", "options": {"size": [4, 5]}},
    "size": [4, 5],
}


def _case(case_id: str, n_slices: int = 3, seed: int = 0, label: bool = True) -> SliceCase:
    rng = np.random.default_rng(seed)
    affine = np.array([[0.0, -2.0, 0.0, 10.0], [0.0, 0.0, 3.0, -5.0], [-1.0, 0.0, 0.0, 7.5], [0, 0, 0, 1]])
    return SliceCase(
        case_id=case_id,
        image=rng.normal(size=(n_slices, 2, 4, 5)).astype(np.float32),
        label=rng.integers(0, 2, size=(n_slices, 4, 5)).astype(np.uint8) if label else None,
        spacing=(1.5, 2.25, 3.0),
        affine=affine,
        attrs={"source_image": f"/src/{case_id}.nii.gz", "source_label": f"/lbl/{case_id}.nii.gz" if label else "",
               "original_shape": [8, 10, 12], "slice_indices": list(range(2, 2 + n_slices))},
    )


def test_round_trip_values_dtypes_attrs(tmp_path):
    path = tmp_path / "slices" / "toy.h5"
    cases = [_case("b", 3, seed=1), _case("a", 2, seed=2), _case("c", 1, seed=3, label=False)]
    write_store(path, iter(cases), ATTRS)  # a generator is accepted
    with SliceStore(path) as store:
        assert store.case_ids == ["a", "b", "c"]  # sorted
        assert store.attrs == {"format_version": FORMAT_VERSION, **ATTRS}
        assert store.n_slices("b") == 3 and store.n_slices("a") == 2
        for original in cases:
            got = store.read_case(original.case_id)
            assert got.image.dtype == np.float32 and got.image.shape == original.image.shape
            np.testing.assert_array_equal(got.image, original.image)
            if original.label is None:
                assert got.label is None
            else:
                assert got.label.dtype == np.uint8
                np.testing.assert_array_equal(got.label, original.label)
            assert got.spacing == (1.5, 2.25, 3.0)
            np.testing.assert_array_equal(got.affine, original.affine)
            assert got.affine.dtype == np.float64
            assert got.attrs["source_image"] == original.attrs["source_image"]
            assert got.attrs["source_label"] == original.attrs["source_label"]
            np.testing.assert_array_equal(got.attrs["original_shape"], [8, 10, 12])
            np.testing.assert_array_equal(got.attrs["slice_indices"], original.attrs["slice_indices"])
    assert list(tmp_path.joinpath("slices").iterdir()) == [path]  # no temp file left


def test_layout_compression_and_chunks(tmp_path):
    path = tmp_path / "toy.h5"
    write_store(path, [_case("a")], ATTRS)
    with h5py.File(path, "r") as fh:
        assert fh.attrs["format_version"] == 1
        assert json.loads(fh.attrs["channel_names"]) == ["T1", "T2"]
        assert json.loads(fh.attrs["size"]) == [4, 5]
        image, label = fh["cases/a/image"], fh["cases/a/label"]
        assert (image.compression, image.compression_opts, image.chunks) == ("gzip", 1, (1, 2, 4, 5))
        assert (label.compression, label.chunks) == ("gzip", (1, 4, 5))
        assert fh["cases/a"].attrs["spacing"].dtype == np.float64


def test_same_input_gives_identical_bytes(tmp_path):
    write_store(tmp_path / "one.h5", [_case("a"), _case("b", seed=4)], ATTRS)
    write_store(tmp_path / "two.h5", [_case("a"), _case("b", seed=4)], ATTRS)
    assert (tmp_path / "one.h5").read_bytes() == (tmp_path / "two.h5").read_bytes()


def test_mismatched_label_names_case_and_leaves_nothing(tmp_path):
    bad = _case("case_7")
    bad.label = np.zeros((3, 4, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"case_7.*label shape"):
        write_store(tmp_path / "toy.h5", [_case("ok"), bad], ATTRS)
    assert list(tmp_path.iterdir()) == []


def test_failing_write_keeps_previous_store(tmp_path):
    path = tmp_path / "toy.h5"
    write_store(path, [_case("old")], ATTRS)
    before = path.read_bytes()

    def broken():
        yield _case("new")
        raise RuntimeError("converter crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        write_store(path, broken(), ATTRS)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["toy.h5"]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: setattr(c, "image", c.image.astype(np.float64)), "float32"),
        (lambda c: setattr(c, "image", c.image[0]), "4-D"),
        (lambda c: setattr(c, "image", c.image[:, :1]), "channels"),
        (lambda c: setattr(c, "image", np.zeros((3, 2, 4, 6), np.float32)), "slice size"),
        (lambda c: setattr(c, "label", c.label.astype(np.int64)), "uint8"),
        (lambda c: setattr(c, "spacing", (1.0, 0.0, 1.0)), "spacing"),
        (lambda c: setattr(c, "affine", np.eye(3)), "affine"),
        (lambda c: c.attrs.pop("slice_indices"), "slice_indices"),
        (lambda c: c.attrs.__setitem__("slice_indices", [0]), "one entry per slice"),
        (lambda c: setattr(c, "case_id", "a/b"), "without '/'"),
    ],
)
def test_invalid_case_is_rejected_by_name(tmp_path, mutate, message):
    case = _case("bad_case")
    mutate(case)
    with pytest.raises(ValueError, match=message) as info:
        write_store(tmp_path / "toy.h5", [case], ATTRS)
    assert "bad_case" in str(info.value) or "a/b" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_different_hw_between_cases_and_duplicate_ids(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        write_store(tmp_path / "toy.h5", [_case("a"), _case("a", seed=5)], ATTRS)
    with pytest.raises(ValueError, match="no cases"):
        write_store(tmp_path / "toy.h5", [], ATTRS)
    with pytest.raises(ValueError, match="lack"):
        write_store(tmp_path / "toy.h5", [_case("a")], {k: v for k, v in ATTRS.items() if k != "size"})
    assert list(tmp_path.iterdir()) == []


def test_missing_garbage_truncated_and_unknown_version(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.h5"):
        SliceStore(tmp_path / "nowhere.h5")
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not an HDF5 file" * 10)
    with pytest.raises(ValueError, match="garbage.h5"):
        SliceStore(garbage)
    good = tmp_path / "good.h5"
    write_store(good, [_case("a"), _case("b")], ATTRS)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match="truncated.h5"):
        with SliceStore(truncated) as store:
            for cid in store.case_ids:
                store.read_case(cid)
    with h5py.File(good, "a") as fh:
        fh.attrs["format_version"] = 99
    with pytest.raises(ValueError, match=r"good.h5.*format_version"):
        SliceStore(good)


def test_unknown_case_and_reopen_after_close(tmp_path):
    path = tmp_path / "toy.h5"
    write_store(path, [_case("a")], ATTRS)
    store = SliceStore(path)
    with pytest.raises(KeyError, match="zzz"):
        store.read_case("zzz")
    first = store.read_case("a").image
    store.close()
    np.testing.assert_array_equal(store.read_case("a").image, first)  # reopens lazily
    store.close()
