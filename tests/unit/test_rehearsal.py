"""A rehearsal's resources table (medkd.rehearsal) and the rehearsal switches of the config (medkd.config)."""

from __future__ import annotations

import csv
import json

import pytest

from medkd import rehearsal
from medkd.config import experiment_seeds, load_config, model_spec, rehearsed


def _log(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def test_resources_rows_from_logs_and_model_dirs(tmp_path):
    logs = tmp_path / "results" / "logs"
    _log(logs / "train" / "e" / "m" / "seed0.log", ["2026 INFO medkd: train: start-up 0.1 s",
                                                     "2026 INFO medkd: train done in 12.5 s (CPU 20.1 s, peak RSS 3120 MiB)"])
    _log(logs / "convert" / "acdc.log", ["2026 INFO medkd: convert done in 4.0 s (CPU 3.9 s, peak RSS 410 MiB)"])
    _log(logs / "infer" / "e" / "m" / "seed0.log", ["2026 ERROR medkd: infer failed: boom"])  # no "done": left out
    model = tmp_path / "results" / "e" / "models" / "m" / "seed0"
    model.mkdir(parents=True)
    (model / "summary.json").write_text(json.dumps({"params": 1234}))
    (model / "config.json").write_text(json.dumps({"spec": {"train": {"batch_size": 8}}, "seed": 0}))
    (model / "env.json").write_text(json.dumps({"cuda": None}))
    # two epochs: 16 slices in 4.0 s (2 steps of 8), then 12 slices in 2.0 s (2 steps: 8 + 4)
    (model / "epochs.jsonl").write_text(json.dumps({"train_seconds": 4.0, "slices_per_second": 4.0}) + "\n"
                                        + json.dumps({"train_seconds": 2.0, "slices_per_second": 6.0}) + "\n")
    rows = rehearsal.collect(tmp_path)
    assert [(r["rule"], r["experiment"]) for r in rows] == [("convert", "acdc"), ("train", "e")]
    train = rows[1]
    # 3120 MiB = 3,271.6 MB, the unit of mem_mb
    assert (train["model"], train["seed"], train["wall_s"], train["peak_rss_mb"]) == ("m", "0", 12.5, 3272)
    assert (train["steps"], train["step_s"], train["slices"], train["batch_size"], train["params"]) == (4, 1.5, 28, 8, 1234)
    assert train["device"] == "cpu"
    out = tmp_path / "resources.csv"
    rehearsal.write(rows, out)
    got = list(csv.DictReader(out.open()))
    assert got[0]["peak_rss_mb"] == "430" and got[0]["steps"] == "" and got[1]["step_s"] == "1.5"
    from medkd.resources import read_measured

    measured = read_measured(out)  # the file sizes the SLURM jobs: the reader of medkd.resources takes it
    assert measured[("train", "e", "m")].step_s == 1.5 and measured[("convert", "acdc", "")].peak_rss_mb == 430
    text = rehearsal.summary(rows, 600.0)
    assert "2 jobs finished in 10.0 min" in text and "convert 1, train 1" in text
    assert text.index("3,272 MB") < text.index("430 MB")


def test_rehearsal_caps_training_keeps_shapes_and_changes_the_hash():
    cfg = load_config("config/paper.yaml")
    real = model_spec(cfg, "mtms_spleen", "t1")
    cfg_r = dict(cfg, rehearsal={"epochs": 1, "steps": 2, "val_slices": 4, "seeds": 1})
    reh = model_spec(cfg_r, "mtms_spleen", "t1")
    assert (reh.train.epochs, reh.train.max_steps, reh.train.max_val_slices) == (1, 2, 4)
    assert (real.train.max_steps, real.train.max_val_slices) == (None, None)
    assert reh.train.batch_size == real.train.batch_size and reh.arch_kwargs == real.arch_kwargs
    assert reh.hash != real.hash
    assert len(experiment_seeds(cfg, "mtms_spleen")) == 3 and experiment_seeds(cfg_r, "mtms_spleen") == \
        experiment_seeds(cfg, "mtms_spleen")[:1]
    assert rehearsed({"epochs": 0}, cfg_r["rehearsal"])["epochs"] == 0  # a baseline stays a baseline
    assert rehearsed({"epochs": 5}, None) == {"epochs": 5}


@pytest.mark.parametrize("organ,acc,lines", [("cardiac", 4, 37), ("mrbrain", 8, 30), ("knee", 5, 74)])
def test_standin_kdmri_masks_have_the_shipped_shape_and_lines(organ, acc, lines):
    from medkd.data.kspace import mask_facts
    from medkd.data.standins import KDMRI_MASKS, kdmri_mask

    mask = kdmri_mask(organ, acc)
    info = KDMRI_MASKS[organ]
    assert mask.shape == info["shape"] and mask.dtype == info["dtype"]
    facts = mask_facts(mask, info["axis"])
    assert facts["sampled_lines"] == lines and facts["centre_lines"] >= 10
    with pytest.raises(ValueError, match="ships no mask"):
        kdmri_mask(organ, 6)
