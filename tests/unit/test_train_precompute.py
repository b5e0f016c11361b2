"""Online teachers precomputed once per job (medkd.train.precompute_teachers): the outputs and tapped
features read back for any batch equal those of running the teacher on that batch; a memory limit or a
value that is not a tensor falls back to running the teacher per batch."""

from __future__ import annotations

import torch
import torch.nn as nn

from medkd.config import load_config, model_spec
from medkd.datasets import SliceData
from medkd.distill.taps import TapRecorder
from medkd.runtime import RunSettings, build_from_spec
from medkd.train import Run, precompute_teachers

TAPS = ["encoders.1", "encoders.0.2"]


def _run(teacher: nn.Module, taps: list[str], data: SliceData) -> Run:
    cfg = load_config("config/config.yaml")
    spec = model_spec(cfg, "hinton_tissue", "student_kd")
    return Run(spec=spec, seed=0, device=torch.device("cpu"), train_data=data, val_data=data, model=None,
               objective=None, recorder=None, teachers={"teacher": (teacher, TapRecorder(teacher, taps))},
               optimizer=None, scheduler=None, scaler=None, metric="val_dice", mode="max", settings=RunSettings())


def _data(n: int = 10) -> SliceData:
    g = torch.Generator().manual_seed(0)
    return SliceData(tensors={"image": torch.randn(n, 1, 32, 32, generator=g),
                              "target": torch.randint(0, 4, (n, 32, 32), generator=g)},
                     case_ids=["a"] * 6 + ["b"] * (n - 6), slice_ids=list(range(6)) + list(range(n - 6)))


def _teacher() -> nn.Module:
    torch.manual_seed(0)
    spec = model_spec(load_config("config/config.yaml"), "hinton_tissue", "teacher")
    return build_from_spec(spec).eval()


def test_precomputed_outputs_and_taps_equal_the_online_teacher():
    teacher, data = _teacher(), _data()
    run = _run(teacher, TAPS, data)
    pre = precompute_teachers(run, data, batch_size=4)  # batches of 4, 4 and 2 slices
    assert set(pre) == {"teacher"}
    assert pre["teacher"].output.shape == (10, 4, 32, 32)
    assert set(pre["teacher"].features) == set(TAPS)
    index = torch.tensor([7, 2, 9])  # across the three precompute batches, out of order
    reader, out = pre["teacher"].select(index)
    online = TapRecorder(teacher, TAPS)
    with torch.no_grad():
        expected = teacher(data.batch(index)["image"])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(reader.get("out", out), expected, rtol=1e-5, atol=1e-5)
    for tap in TAPS:
        torch.testing.assert_close(reader.get(tap, out), online.features[tap], rtol=1e-5, atol=1e-5)
    assert [t.shape for t in reader.get(TAPS, out)] == [online.features[t].shape for t in TAPS]
    # the run reads the precomputed values when they exist, and runs the teacher otherwise
    run.precomputed["train"] = pre
    rec, got = run.teacher_outputs("train", index, data.batch(index))["teacher"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    rec, got = run.teacher_outputs("val", index, data.batch(index))["teacher"]
    assert rec is run.teachers["teacher"][1]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_precompute_respects_the_memory_limit():
    teacher, data = _teacher(), _data()
    run = _run(teacher, TAPS, data)
    pre = precompute_teachers(run, data, batch_size=4)
    need = pre["teacher"].nbytes
    # output 10 x 4 x 32 x 32 float32 plus the two feature maps
    feats = sum(f.numel() for f in pre["teacher"].features.values()) * 4
    assert need == 10 * 4 * 32 * 32 * 4 + feats
    assert precompute_teachers(run, data, batch_size=4, limit_bytes=need - 1) is None
    assert precompute_teachers(run, data, batch_size=5, limit_bytes=need) is not None


class _TupleTeacher(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return y, y  # neither a tensor nor a dict of tensors


def test_a_value_that_is_not_a_tensor_runs_the_teacher_per_batch():
    data = _data()
    assert precompute_teachers(_run(_TupleTeacher().eval(), [], data), data) is None
