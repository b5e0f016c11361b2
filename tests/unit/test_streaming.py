"""Bounded-memory data (medkd.datasets): a split or teacher cache over the job's data budget is read from its
store batch by batch, and gives exactly the arrays of the in-memory path for any index, so training, caching,
inference and evaluation produce the same bytes in both modes."""

from __future__ import annotations

import hashlib

import h5py
import numpy as np
import pytest
import torch

from medkd import datasets
from medkd.data.kspace import write_kspace_store
from medkd.data.splits import make_split, write_split
from medkd.data.store import SliceCase, write_store
from medkd.runtime import RunSettings
from medkd.spec import ModelSpec

CLASSES = {"bg": [0], "a": [1], "b": [2, 3]}  # two source values into one class: the lookup is exercised


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Five cases of 3-7 slices (two channels, 24x20, labels 0-3) and a split of them."""
    root = tmp_path_factory.mktemp("stream")
    rng = np.random.default_rng(3)
    cases = []
    for i, n in enumerate((3, 7, 4, 5, 6)):
        label = rng.integers(0, 4, size=(n, 24, 20), dtype=np.uint8)
        image = (label[:, None].astype(np.float32) + rng.normal(0, 0.5, size=(n, 2, 24, 20))).astype(np.float32)
        cases.append(SliceCase(case_id=f"c{i}", image=image, label=label, spacing=(1.0, 1.5, 2.0 + i),
                               affine=np.eye(4), attrs={"source_image": f"c{i}.nii.gz", "source_label": f"c{i}l.nii.gz",
                                                         "original_shape": [24, 20, n],
                                                         "slice_indices": list(range(n))}))
    store = root / "toy.h5"
    write_store(store, cases, {"dataset": "toy", "channel_names": ["a", "b"],
                               "label_names": {"0": "bg", "1": "a", "2": "b", "3": "c"}, "provenance": {},
                               "size": [24, 20]})
    split = root / "split.json"
    write_split(make_split([f"c{i}" for i in range(5)], 0, fractions={"train": 0.6, "val": 0.2, "test": 0.2}), split)
    return root, store, split


def _spec(channels=(1, 0), epochs=2, teacher=None) -> ModelSpec:
    d = {
        "experiment": "toy", "model": "m", "dataset": "toy", "task": "segmentation", "channels": list(channels),
        "classes": CLASSES, "role": "teacher", "arch": "unet", "arch_kwargs": {"base": 4, "depth": 2},
        "train": {"epochs": epochs, "batch_size": 3, "optimizer": {"name": "adam", "lr": 0.01},
                  "select": {"metric": "val_dice"}},
        "losses": [{"loss": "cross_entropy"}],
    }
    return ModelSpec.from_dict(d)


def _all_cases(split):
    return [f"c{i}" for i in range(5)]


def test_streamed_segmentation_batches_equal_the_in_memory_ones(toy):
    _, store, split = toy
    cases = _all_cases(split)
    mem = datasets.load_segmentation(store, cases, [1, 0], CLASSES, budget=datasets.DataBudget(None))
    streamed = datasets.load_segmentation(store, cases, [1, 0], CLASSES, budget=datasets.DataBudget(0))
    assert not mem.streaming and streamed.streaming and streamed.tensors == {}
    assert (mem.case_ids, mem.slice_ids, mem.spacing) == (streamed.case_ids, streamed.slice_ids, streamed.spacing)
    assert len(mem) == 25
    # out of order, across cases, a slice twice: the same arrays, dtypes and shapes
    index = torch.tensor([24, 0, 7, 7, 3, 11, 2])
    a, b = mem.batch(index), streamed.batch(index)
    for key in ("image", "target"):
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape
        assert torch.equal(a[key], b[key])
    assert b["image"].shape == (7, 2, 24, 20) and b["target"].dtype == torch.int64
    # the class lookup: source values 2 and 3 are class 2
    raw = h5py.File(store, "r")["cases/c4/label"][()]
    assert torch.equal(b["target"][0], torch.from_numpy(np.where(raw[5] >= 2, 2, raw[5]).astype(np.int64)))
    np.testing.assert_array_equal(streamed.take("image", [24])[0, 0].numpy(),
                                  h5py.File(store, "r")["cases/c4/image"][5, 1])
    numpy_streamed = datasets.load_segmentation(store, cases, [0], CLASSES, numpy=True, budget=datasets.DataBudget(0))
    assert isinstance(numpy_streamed.take("target", np.arange(3)), np.ndarray)


def test_the_budget_decides_and_is_shared_by_the_loads_of_a_job(toy):
    _, store, split = toy
    cases = _all_cases(split)
    need = datasets.segmentation_bytes(25, 2, 24, 20)
    assert need == 25 * 24 * 20 * (2 * 4 + 8)
    budget = datasets.DataBudget(need / 2**20)
    assert not datasets.load_segmentation(store, cases, [1, 0], CLASSES, budget=budget).streaming
    assert budget.left == 0
    # the second split of the same job no longer fits: it streams
    assert datasets.load_segmentation(store, cases[:1], [1, 0], CLASSES, budget=budget).streaming


def test_streamed_label_values_are_checked_before_the_first_batch(toy):
    _, store, split = toy
    with pytest.raises(ValueError, match=r"c1: label values \[3\] are not assigned"):
        datasets.load_segmentation(store, ["c1"], [0], {"bg": [0], "a": [1], "b": [2]},
                                   budget=datasets.DataBudget(0))


def test_streamed_kspace_batches_equal_the_in_memory_ones(toy, tmp_path):
    _, store, _ = toy
    kspace = tmp_path / "k.h5"
    write_kspace_store(store, kspace, {"kind": "random", "acceleration": 4, "centre_fraction": 0.1, "seed": 0})
    cases = ["c0", "c1", "c2"]
    mem = datasets.load_reconstruction(kspace, cases, budget=datasets.DataBudget(None))
    streamed = datasets.load_reconstruction(kspace, cases, budget=datasets.DataBudget(0))
    assert streamed.streaming and not mem.streaming
    index = torch.tensor([13, 1, 5, 0])
    a, b = mem.batch(index), streamed.batch(index)
    assert set(a) == set(b) == {"image", "target", "kspace", "mask", "index", "cache"}
    for key in ("image", "target", "kspace", "mask"):
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    assert b["kspace"].dtype == torch.complex64 and b["mask"].shape == (4, 24, 20)


def test_streamed_teacher_cache_equals_the_in_memory_one(toy, tmp_path):
    _, store, split = toy
    cases = _all_cases(split)
    cache = tmp_path / "cache.h5"
    rng = np.random.default_rng(0)
    with h5py.File(cache, "w") as fh:
        fh.attrs["spec_hash"] = "abc"
        for cid, n in zip(cases, (3, 7, 4, 5, 6)):
            fh.create_dataset(f"cases/{cid}/logits", data=rng.normal(size=(n, 3, 24, 20)).astype(np.float32))
            fh.create_dataset(f"cases/{cid}/entropy", data=rng.random((n, 24, 20)).astype(np.float32))
    sub = ["c3", "c1"]  # a split whose cases are not in the cache's order
    mem = datasets.load_segmentation(store, sub, [0], CLASSES)
    streamed = datasets.load_segmentation(store, sub, [0], CLASSES)
    datasets.attach_cache(mem, "t", cache, ["entropy", "logits"], spec_hash="abc", budget=datasets.DataBudget(None))
    datasets.attach_cache(streamed, "t", cache, ["entropy", "logits"], spec_hash="abc", budget=datasets.DataBudget(0))
    assert isinstance(streamed.cache["t"], datasets._Reader)
    index = torch.tensor([11, 0, 4, 5])
    a, b = mem.batch(index)["cache"]["t"], streamed.batch(index)["cache"]["t"]
    for key in ("entropy", "logits"):
        assert a[key].dtype == b[key].dtype == torch.float32 and torch.equal(a[key], b[key])
    with h5py.File(cache, "r") as fh:  # position 0 is case c3's first slice
        np.testing.assert_array_equal(b["logits"][1].numpy(), fh["cases/c3/logits"][0])


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_training_inference_and_evaluation_are_byte_identical_in_both_modes(toy, tmp_path):
    from medkd.cache import build_cache
    from medkd.evaluate import evaluate
    from medkd.infer import predict
    from medkd.robustness import evaluate_robustness
    from medkd.train import TrainInputs, train

    _, store, split = toy
    spec = _spec()
    out = {}
    for mode, mb in (("memory", None), ("stream", 0)):
        settings = RunSettings(device="cpu", threads=1, data_memory_mb=mb)
        model_dir = tmp_path / mode
        train(spec, 0, TrainInputs(store=store, split=split, data_hash="x"), model_dir, settings=settings, progress=False)
        predict(model_dir, store, split, tmp_path / f"{mode}_pred.h5", settings=settings)
        evaluate(tmp_path / f"{mode}_pred.h5", model_dir, store, split, tmp_path / f"{mode}.csv",
                 conventions=["engine", "mtms_pooled"], data_memory_mb=mb)
        build_cache(model_dir, store, split, tmp_path / f"{mode}_cache.h5", batch_size=2, settings=settings)
        evaluate_robustness(model_dir, store, split, tmp_path / f"{mode}_rob.csv", ["gaussian_noise"], [2],
                            settings=settings)
        out[mode] = model_dir
    assert _digest(out["memory"] / "model.pt") == _digest(out["stream"] / "model.pt")
    def scores(name):  # every metric row; the latency row (convention cost) is a timing
        return [line for line in (tmp_path / name).read_text().splitlines() if ",cost," not in line]

    assert len(scores("stream.csv")) > 10 and scores("memory.csv") == scores("stream.csv")
    for name in ("pred", "cache"):  # every array of the predictions and the teacher cache
        with h5py.File(tmp_path / f"memory_{name}.h5") as a, h5py.File(tmp_path / f"stream_{name}.h5") as b:
            keys = []
            a.visititems(lambda k, v: keys.append(k) if isinstance(v, h5py.Dataset) else None)
            assert len(keys) >= 1
            for k in keys:
                np.testing.assert_array_equal(a[k][()], b[k][()], err_msg=f"{name}:{k}")
    assert (tmp_path / "memory_rob.csv").read_text() == (tmp_path / "stream_rob.csv").read_text()
    import json

    env = json.loads((out["stream"] / "env.json").read_text())
    assert env["data_in_memory"] == {"train": False, "val": False}
    assert env["run_settings"]["data_memory_mb"] == 0
