"""GPU-ready training, checked on CPU: bf16 autocast trains the tiny model, fp16 brings a GradScaler, channels_last
and the cuDNN switches are run settings (never in the spec hash), and the same experiment planned for CPU and
for GPU has the same spec hash."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch

from medkd.config import REPO_ROOT, load_config, model_spec
from medkd.data.splits import make_split, write_split
from medkd.data.store import SliceCase, write_store
from medkd.runtime import RunSettings, autocast, grad_scaler, to_device
from medkd.spec import ModelSpec
from medkd.train import TrainInputs, train

TINY = REPO_ROOT / "tests" / "integration" / "tiny.yaml"


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    """Six cases of smooth 32x32 images with a 4-class label (a thresholded blob), and a split."""
    root = tmp_path_factory.mktemp("toy")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    cases = []
    for i in range(6):
        image = np.empty((4, 1, 32, 32), np.float32)
        label = np.empty((4, 32, 32), np.uint8)
        for s in range(4):
            cy, cx = rng.uniform(10, 22, size=2)
            r = np.hypot(yy - cy, xx - cx)
            label[s] = 3 - np.digitize(r, [4, 8, 12])  # rings: 3 inside, 0 outside
            image[s, 0] = label[s] + rng.normal(0, 0.3, size=(32, 32))
        cases.append(SliceCase(case_id=f"c{i}", image=image, label=label, spacing=(1.0, 1.0, 1.0),
                               affine=np.eye(4),
                               attrs={"source_image": f"c{i}.nii.gz", "source_label": f"c{i}_gt.nii.gz",
                                      "original_shape": [32, 32, 4], "slice_indices": [0, 1, 2, 3]}))
    store = root / "toy.h5"
    write_store(store, cases, {"dataset": "toy", "channel_names": ["img"],
                               "label_names": {"0": "bg", "1": "a", "2": "b", "3": "c"}, "provenance": {},
                               "size": [32, 32]})
    split = root / "split.json"
    write_split(make_split([f"c{i}" for i in range(6)], 0, fractions={"train": 0.5, "val": 0.5, "test": 0.0}), split)
    return store, split


def _spec(precision: str, epochs: int = 3) -> ModelSpec:
    return ModelSpec.from_dict({
        "experiment": "toy", "model": "unet_small", "dataset": "toy", "task": "segmentation", "channels": [0],
        "classes": {"bg": [0], "a": [1], "b": [2], "c": [3]}, "role": "teacher", "arch": "unet",
        "arch_kwargs": {"base": 4, "depth": 2},
        "train": {"epochs": epochs, "batch_size": 4, "precision": precision, "optimizer": {"name": "adam", "lr": 0.01},
                  "select": {"metric": "val_dice"}},
        "losses": [{"loss": "cross_entropy"}],
    })


def test_bf16_autocast_trains_the_tiny_model_on_cpu(toy_data, tmp_path):
    store, split = toy_data
    inputs = TrainInputs(store=store, split=split)
    summaries = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        summaries[precision] = train(_spec(precision), 0, inputs, out, RunSettings(device="cpu", threads=1),
                                     progress=False)
        epochs = [json.loads(line) for line in (out / "epochs.jsonl").read_text().splitlines()]
        assert len(epochs) == 3 and all(math.isfinite(e["train_loss"]) for e in epochs)
        assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]  # it learns
        assert summaries[precision]["precision"] == precision
    # the precision is part of the recipe: another spec hash, other numbers, same engine
    assert summaries["bf16"]["spec_hash"] != summaries["fp32"]["spec_hash"]
    assert summaries["bf16"]["best_score"] > 0.2
    env = json.loads((tmp_path / "bf16" / "env.json").read_text())
    assert env["run_settings"] == {"device": "cpu", "threads": 1, "channels_last": "auto", "cudnn_benchmark": False,
                                   "deterministic": False, "data_memory_mb": 4096}
    assert env["data_in_memory"] == {"train": True, "val": True}
    assert env["memory_format"] == "channels_last"  # a U-Net on CPU under "auto"
    import torch

    kernels = env["kernels"]  # which CPU kernels produced the number
    assert kernels["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert kernels["cpu"] and isinstance(kernels["env"], dict)


def test_kernel_record_names_forced_kernels_in_a_child():
    import subprocess
    import sys

    code = ("import json, torch; from medkd.provenance import kernel_record; "
            "print(json.dumps(kernel_record(torch)))")
    env = {**__import__("os").environ, "ATEN_CPU_CAPABILITY": "default", "OPENBLAS_CORETYPE": "Haswell"}
    env.pop("ONEDNN_MAX_CPU_ISA", None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    record = json.loads(out.stdout)
    assert record["torch_cpu_capability"] == "DEFAULT"
    assert record["env"]["ATEN_CPU_CAPABILITY"] == "default" and "ONEDNN_MAX_CPU_ISA" not in record["env"]
    assert record["numpy_blas"][0]["api"] == "openblas" and record["numpy_blas"][0]["core"] == "Haswell"


def test_bf16_autocast_really_runs_in_bfloat16_on_cpu():
    conv = torch.nn.Conv2d(1, 2, 3)
    x = torch.randn(1, 1, 8, 8)
    with autocast(torch.device("cpu"), "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast(torch.device("cpu"), "fp32"):
        assert conv(x).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown precision"):
        autocast(torch.device("cpu"), "fp8")


def test_grad_scaler_only_for_fp16():
    cpu = torch.device("cpu")
    assert not grad_scaler(cpu, "fp32").is_enabled()
    assert not grad_scaler(cpu, "bf16").is_enabled()
    assert grad_scaler(cpu, "fp16").is_enabled()


def test_channels_last_is_a_run_setting(toy_data, tmp_path):
    """channels_last changes the memory layout of the model and the batches, not the spec or the result."""
    store, split = toy_data
    batch = to_device({"image": torch.randn(2, 1, 8, 8), "target": torch.zeros(2, 8, 8, dtype=torch.long),
                       "cache": {"t": {"logits": torch.randn(2, 4, 8, 8)}}}, torch.device("cpu"), channels_last=True)
    assert batch["image"].is_contiguous(memory_format=torch.channels_last)
    assert batch["cache"]["t"]["logits"].is_contiguous(memory_format=torch.channels_last)
    assert batch["target"].dtype == torch.long  # integer tensors keep their layout
    settings = RunSettings(device="cpu", channels_last=True)
    model = settings.prepare(torch.nn.Conv2d(1, 2, 3))
    assert model.weight.is_contiguous(memory_format=torch.channels_last)

    inputs = TrainInputs(store=store, split=split)
    a = train(_spec("fp32", epochs=1), 0, inputs, tmp_path / "a", RunSettings(device="cpu", channels_last=False),
              progress=False)
    b = train(_spec("fp32", epochs=1), 0, inputs, tmp_path / "b", settings, progress=False)
    assert a["spec_hash"] == b["spec_hash"]
    assert b["best_score"] == pytest.approx(a["best_score"], abs=1e-4)
    assert json.loads((tmp_path / "a" / "env.json").read_text())["memory_format"] == "contiguous"
    assert json.loads((tmp_path / "b" / "env.json").read_text())["memory_format"] == "channels_last"


def test_channels_last_auto_follows_the_architecture_on_cpu():
    """"auto" (the default) puts a model in NHWC in the phases its class lists in ``cpu_channels_last``; a
    boolean overrides it for every model and phase; anything else is refused."""
    from medkd.models import build_model

    unet = build_model("unet", in_channels=1, out_channels=2, base=4, depth=2)          # ("train", "eval")
    teacher = build_model("brats_teacher", in_channels=2, out_channels=2)                # ("eval",)
    student = build_model("brats_student", in_channels=2, out_channels=2)                # none
    auto = RunSettings(device="cpu")
    assert auto.channels_last == "auto"
    assert [auto.nhwc(m, phase) for m in (unet, teacher, student) for phase in ("train", "eval")] == \
        [True, True, False, True, False, False]
    def conv_weights(model):
        return [p for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[-1] > 1]  # layouts differ

    for model, phase, nhwc in ((teacher, "train", False), (student, "eval", False), (unet, "train", True),
                               (teacher, "eval", True)):
        prepared = auto.prepare(model, phase)
        assert conv_weights(prepared)
        assert all(p.is_contiguous(memory_format=torch.channels_last) == nhwc for p in conv_weights(prepared))
    for value in (True, False):
        forced = RunSettings(device="cpu", channels_last=value)
        assert {forced.nhwc(m, phase) for m in (unet, teacher, student) for phase in ("train", "eval")} == {value}
    with pytest.raises(ValueError, match="channels_last must be"):
        RunSettings(device="cpu", channels_last="yes").nhwc(unet)
    with pytest.raises(ValueError, match="phase must be"):
        auto.nhwc(unet, "infer")


def test_channels_last_predictions_match_the_built_layout():
    """The same trained weights predict the same classes in either layout (the logits differ by rounding)."""
    from medkd.models import build_model

    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, out_channels=4, base=4, depth=2).eval()
    x = torch.randn(6, 1, 32, 32)
    with torch.no_grad():
        ref = model(x)
        nhwc = RunSettings(device="cpu", channels_last=True)
        out = nhwc.prepare(model)(to_device({"image": x}, torch.device("cpu"), True)["image"])
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_deterministic_wins_over_cudnn_benchmark():
    before = torch.are_deterministic_algorithms_enabled()
    try:
        RunSettings(device="cpu", cudnn_benchmark=True, deterministic=True).apply()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
        RunSettings(device="cpu", cudnn_benchmark=True).apply()
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(before)
        torch.backends.cudnn.benchmark = torch.backends.cudnn.deterministic = False
        torch.set_num_threads(1)


def test_same_experiment_planned_for_cpu_and_gpu_has_the_same_spec_hash():
    """device, threads, channels_last and the cuDNN switches are run settings: no spec hash moves; the
    precision is part of the recipe: it moves the hash."""
    import yaml

    raw = yaml.safe_load(TINY.read_text())
    gpu = copy.deepcopy(raw)
    gpu.update(device="cuda", threads=8, channels_last=True, cudnn_benchmark=True)
    cpu_cfg, gpu_cfg = load_config(raw), load_config(gpu)
    for model in raw["experiments"]["tiny"]["models"]:
        assert model_spec(cpu_cfg, "tiny", model).hash == model_spec(gpu_cfg, "tiny", model).hash
    bf16 = copy.deepcopy(raw)
    bf16["experiments"]["tiny"]["models"]["teacher"]["train"]["precision"] = "bf16"
    assert model_spec(load_config(bf16), "tiny", "teacher").hash != model_spec(cpu_cfg, "tiny", "teacher").hash


def test_class_indices_equal_argmax_including_ties_and_layouts():
    """class_indices is argmax over dim 1: on random scores, on ties (the first maximum wins, index 0 for an
    all-equal pixel, index 1 when channels 1 and 2 tie above 0) and on a channels_last input."""
    from medkd.runtime import class_indices

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 4, 5, 6, generator=g)
    assert torch.equal(class_indices(x), x.argmax(1))
    assert torch.equal(class_indices(x.contiguous(memory_format=torch.channels_last)), x.argmax(1))
    ties = torch.zeros(1, 3, 1, 2)
    ties[0, 1:, 0, 1] = 1.0  # pixel 0: all equal; pixel 1: channels 1 and 2 tie
    assert class_indices(ties).tolist() == [[[0, 1]]] == ties.argmax(1).tolist()
    assert class_indices(x).dtype == torch.int64 and class_indices(x).shape == (3, 5, 6)
