"""Cluster sizes from the config (medkd.resources) and the cost plan (medkd.plan)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from medkd import plan as planmod
from medkd import resources
from medkd.config import REPO_ROOT, ConfigError, load_config, model_spec

TINY = yaml.safe_load((REPO_ROOT / "tests" / "integration" / "tiny.yaml").read_text())


def _cfg(**extra) -> dict:
    raw = copy.deepcopy(TINY)
    for key, value in extra.items():
        if key == "exp_resources":
            raw["experiments"]["tiny"]["resources"] = value
        else:
            raw[key] = value
    return load_config(raw)


def test_runtime_model_then_experiment_then_config_then_default():
    cfg = _cfg(resources={"train": {"runtime": 100}, "cache": {"runtime": 7}},
               exp_resources={"train": {"runtime": 50}, "models": {"teacher": {"runtime": 300, "mem_mb": 9000}}})
    assert resources.runtime(cfg, "train", "tiny", "teacher") == 300
    assert resources.runtime(cfg, "train", "tiny", "student") == 50
    assert resources.runtime(cfg, "cache", "tiny", "teacher") == 7  # models entries are for training jobs only
    assert resources.runtime(cfg, "infer", "tiny", "student") == resources.DEFAULT_RUNTIME["infer"]
    assert resources.runtime(cfg, "train", "tiny", "student", attempt=3) == 150  # a retry asks for more
    assert resources.mem_mb(cfg, "train", "tiny", "teacher", attempt=2) == 18000


def test_memory_scales_with_the_data_and_gpu_follows_the_device():
    cfg = _cfg(device="auto")
    small = {"n_slices": 100, "convert": {"size": [32, 32]}, "channel_names": ["t1"]}
    large = {**small, "n_slices": 100_000, "convert": {"size": [256, 256]}}
    a = resources.mem_mb(cfg, "train", "tiny", "student_kd", fingerprint=small)
    b = resources.mem_mb(cfg, "train", "tiny", "student_kd", fingerprint=large)
    assert a == resources.BASE_MB["gpu"] + 100 and b > 50_000  # 100k slices x (4 + 8 + teacher maps) x 65536 px
    assert resources.mem_mb(cfg, "evaluate", "tiny", "student", fingerprint=small) <= resources.BASE_MB["cpu"] + 100
    assert resources.gpu(cfg, "train") == resources.gpu(cfg, "infer") == 1 and resources.gpu(cfg, "evaluate") == 0
    assert resources.gpu(_cfg(device="cpu"), "train") == 0


def test_resources_name_models_of_the_experiment():
    with pytest.raises(ConfigError, match="resources/models: unknown models"):
        _cfg(exp_resources={"models": {"nope": {"runtime": 5}}})
    with pytest.raises(ConfigError, match="runtime"):
        _cfg(resources={"train": {"runtime": "long"}})


def test_resources_do_not_move_spec_hashes():
    plain, sized = _cfg(), _cfg(exp_resources={"train": {"runtime": 5}}, resources={"infer": {"mem_mb": 500}})
    for model in TINY["experiments"]["tiny"]["models"]:
        assert model_spec(plain, "tiny", model).hash == model_spec(sized, "tiny", model).hash


def test_jobs_per_rule_of_the_tiny_config():
    # the counts `snakemake -n results/tables/all.csv --configfile tests/integration/tiny.yaml` prints
    assert dict(planmod.count_jobs(_cfg())) == {"fetch": 1, "convert": 1, "split": 1, "train": 3, "cache": 1,
                                                "infer": 3, "evaluate": 3, "tables": 1, "panels": 1, "track": 1,
                                                "collect": 1}


def test_plan_flops_are_the_engines_flops():
    """The plan measures on the meta device what the engine measures on real tensors after training."""
    from medkd.runtime import build_from_spec
    from medkd.train import flops_per_slice

    spec = model_spec(_cfg(), "tiny", "teacher")
    model = build_from_spec(spec)
    batch = {"image": torch.zeros(1, 1, 32, 32)}
    assert planmod.forward_flops(spec, (32, 32)) == flops_per_slice(model, batch) > 0


def test_plan_text_and_calibration(tmp_path):
    cfg = _cfg(device="auto")
    p = planmod.make_plan(cfg, "tiny.yaml", results=tmp_path, tflops=1.0)
    assert p.sizes["embedded"].source.startswith("estimate") and p.sizes["embedded"].cases == 5
    assert {r.model for r in p.train} == {"teacher", "student", "student_kd"}
    assert p.pflop["train"] > 0 and p.gpu_jobs == {"train": 3, "cache": 1, "infer": 3, "robustness": 0}
    text = planmod.format_plan(p)
    assert "total" in text and "GPU-h" in text and "720m" in text
    # with a converted dataset the fingerprint's counts are used
    (tmp_path / "slices").mkdir()
    (tmp_path / "slices" / "embedded.json").write_text(json.dumps({"n_cases": 5, "n_slices": 40}))
    assert planmod.make_plan(cfg, results=tmp_path).sizes["embedded"].slices == 40
    # calibration: 3 x forward FLOPs x slices x epochs over the seconds spent training
    run = tmp_path / "results" / "m"
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"epochs": 2, "train_seconds": 4.0, "flops_per_slice": 1e12,
                                                  "train_slices": 10}))
    assert planmod.calibrate(tmp_path / "results") == (pytest.approx(15.0), 1)


def test_local_gpu_request_follows_the_machine(tmp_path):
    cfg = {"device": "auto"}
    assert resources.gpu(cfg, "train") == 1  # a cluster run: the profile maps it to --gpus=1
    assert resources.gpu(cfg, "train", local_gpus=0) == 0  # a CPU-only workstation: not serialised
    assert resources.gpu(cfg, "train", local_gpus=2) == 1
    assert resources.gpu({"device": "cuda"}, "train", local_gpus=0) == 1  # asked for explicitly: keep the limit
    assert resources.gpu({"device": "cpu"}, "train", local_gpus=2) == 0
    assert resources.gpu(cfg, "evaluate", local_gpus=2) == 0
    (tmp_path / "nvidia0").touch()
    (tmp_path / "nvidia1").touch()
    (tmp_path / "nvidiactl").touch()
    assert resources.visible_gpus({}, dev=str(tmp_path)) == 2
    assert resources.visible_gpus({"CUDA_VISIBLE_DEVICES": "3"}, dev=str(tmp_path)) == 1
    assert resources.visible_gpus({"CUDA_VISIBLE_DEVICES": ""}, dev=str(tmp_path)) == 0
    assert resources.visible_gpus({"CUDA_VISIBLE_DEVICES": "-1"}, dev=str(tmp_path)) == 0
    assert resources.visible_gpus({}, dev=str(tmp_path / "missing")) == 0
