"""Cluster sizes from the config (medkd.resources) and the cost plan (medkd.plan)."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import yaml

from medkd import partitions
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
    assert resources.runtime(cfg, "train", "tiny", "student", attempt=3) == 50  # a retry resumes from last.pt
    assert resources.mem_mb(cfg, "train", "tiny", "teacher", attempt=2) == 18000


def test_memory_scales_with_the_data_and_gpu_follows_the_device():
    cfg = _cfg(device="auto")
    small = {"n_slices": 100, "convert": {"size": [32, 32]}, "channel_names": ["t1"]}
    large = {**small, "n_slices": 100_000, "convert": {"size": [256, 256]}}
    a = resources.mem_mb(cfg, "train", "tiny", "student_kd", fingerprint=small)
    b = resources.mem_mb(cfg, "train", "tiny", "student_kd", fingerprint=large)
    assert a == resources.BASE_MB["gpu"] + 100  # 100 slices x (4 + 8 + teacher maps) x 1024 px, x 2
    # 100k slices x (4 + 8 + teacher maps) x 65536 px would be > 50 GB: the data engine holds at most its budget
    assert resources.data_mb(large, cfg["experiments"]["tiny"], "train") > 50_000
    assert b == resources.BASE_MB["gpu"] + 4100
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
    # an epoch of at most max_steps batches (a validation round) counts those slices only: 2 x 4 of 10
    (run / "config.json").write_text(json.dumps({"spec": {"train": {"max_steps": 2, "batch_size": 4}}}))
    assert planmod.calibrate(tmp_path / "results") == (pytest.approx(12.0), 1)
    rounds = _cfg(device="auto")
    rounds["experiments"]["tiny"]["models"]["teacher"]["train"]["max_steps"] = 1
    full = next(r for r in planmod.make_plan(cfg, results=tmp_path, tflops=1.0).train if r.model == "teacher")
    short = next(r for r in planmod.make_plan(rounds, results=tmp_path, tflops=1.0).train if r.model == "teacher")
    assert short.train_slices == full.train_slices and short.pflop_job < full.pflop_job


def test_training_runtime_counts_max_steps_per_epoch():
    m = resources.Measured(wall_s=0, peak_rss_mb=0, steps=0, step_s=1.0, slices=0, batch_size=None, device="cpu")
    exp_cfg = {"split": {"fractions": {"train": 0.5, "val": 0.5, "test": 0.0}}}
    # 100 slices: 50 train at batch 10 = 5 steps per epoch, 50 val = 5 batches at 1/3 of a step per epoch
    full = resources.train_minutes(m, {"epochs": 6, "batch_size": 10}, exp_cfg, 10, 100, 1.0, 0.0)
    assert full == pytest.approx((6 * 5 + 6 * 5 / 3) / 60)
    rounds = resources.train_minutes(m, {"epochs": 6, "batch_size": 10, "max_steps": 2}, exp_cfg, 10, 100, 1.0, 0.0)
    assert rounds == pytest.approx((6 * 2 + 6 * 5 / 3) / 60)


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


# ------------------------------------------------------------------------------------------ measured sizes

MEASURED = REPO_ROOT / "tests" / "unit" / "data" / "measured_tiny.csv"
SITE = {"cpu": {"max_runtime": 4320, "max_mem_mb": 190000},
        "gpu": {"max_gpu": 4, "max_runtime": "2-00:00:00", "max_mem_mb": 500000}}


def test_measured_csv_merges_seeds():
    m = resources.read_measured(MEASURED)
    teacher = m[("train", "tiny", "teacher")]
    assert (teacher.rows, teacher.peak_rss_mb, teacher.step_s, teacher.batch_size) == (2, 3184, 2.52, 8)
    assert m[("cache", "tiny", "teacher")].step_s is None
    assert resources.find_measured(m, _cfg(), "convert", dataset="embedded").peak_rss_mb == 1310


def test_train_sized_from_the_measurement_by_hand():
    m = resources.read_measured(MEASURED)
    # device cpu: no speed-up. 200 slices, 5 cases: train 0.6 -> 120 slices / batch 8 = 15 steps x 2 epochs = 30,
    # val 0.2 -> 40 / 8 = 5 batches at 1/3 step x 2 epochs = 3.33; 33.33 x 2.52 s = 84 s = 1.4 min, + 10 start-up
    s = resources.size(_cfg(), "train", "tiny", "teacher", measured=m, dataset_size=(5, 200))
    assert s.need_runtime == pytest.approx(11.4) and s.runtime == 20  # x 1.5 = 17.1, up to 10 minutes
    assert s.need_mem_mb == 3184 and s.mem_mb == 4800  # 3184 x 1.5 = 4776, up to 100 MB
    assert s.basis == "measured/measured" and s.gpu == 0
    # on a GPU 20x faster: 84 s / 20 = 4.2 s + 10 min start-up = 10.07 min -> x 1.5 = 15.1 -> 20; host memory + 4000
    g = resources.size(_cfg(device="auto", gpu_speedup=20), "train", "tiny", "teacher", measured=m,
                       dataset_size=(5, 200))
    assert g.need_runtime == pytest.approx(10.07) and g.runtime == 20
    assert g.mem_mb == 8800 and g.gpu == 1  # 4776 + 4000 = 8776, up to 100 MB
    # no speed-up stated for a GPU job: the default runtime; memory still measured
    d = resources.size(_cfg(device="auto"), "train", "tiny", "teacher", measured=m, dataset_size=(5, 200))
    assert d.runtime == resources.DEFAULT_RUNTIME["train"] and d.basis == "default/measured"
    # a configured value still wins over the measurement
    c = resources.size(_cfg(exp_resources={"models": {"teacher": {"runtime": 33}}}), "train", "tiny", "teacher",
                       measured=m, dataset_size=(5, 200))
    assert (c.runtime, c.mem_mb, c.basis) == (33, 4800, "configured/measured")


def test_unmeasured_memory_is_bounded_by_the_data_budget():
    cfg = _cfg(device="auto")
    huge = {"n_slices": 100_000, "convert": {"size": [256, 256]}, "channel_names": ["t1"]}
    assert resources.mem_mb(cfg, "train", "tiny", "student_kd", fingerprint=huge) == 6000 + 4100  # 4096 -> 100s
    assert resources.mem_mb(_cfg(device="auto", data_memory_mb=0), "train", "tiny", "student_kd",
                            fingerprint=huge) == 6000


def test_retry_keeps_the_runtime_and_grows_memory_up_to_the_partition():
    m = resources.read_measured(MEASURED)
    parts = partitions.from_mapping({"small": {"max_runtime": 600, "max_mem_mb": 9000}})
    kw = dict(measured=m, dataset_size=(5, 200), partitions=parts)
    one, two, three = (resources.size(_cfg(), "train", "tiny", "teacher", a, **kw) for a in (1, 2, 3))
    assert one.runtime == two.runtime == three.runtime == 20
    assert (one.mem_mb, two.mem_mb, three.mem_mb) == (4800, 9000, 9000)  # 9600 and 14400 capped at the partition
    assert one.partition == three.partition == "small"


def test_a_job_no_partition_takes_stops_planning_naming_it():
    m = resources.read_measured(MEASURED)
    parts = partitions.from_mapping({"small": {"max_runtime": 600, "max_mem_mb": 3000},
                                     "gpu": {"max_gpu": 1, "max_mem_mb": 3100}})
    with pytest.raises(resources.SizingError, match=r"`train exp=tiny, model=teacher`.*3,184 MB.*small.*gpu"):
        resources.size(_cfg(), "train", "tiny", "teacher", measured=m, dataset_size=(5, 200), partitions=parts,
                       job="train exp=tiny, model=teacher")
    # a GPU job only fits GPU partitions, and a configured runtime above every MaxTime fails too
    with pytest.raises(resources.SizingError, match="with GPUs"):
        resources.size(_cfg(device="auto", exp_resources={"train": {"runtime": 5000}}), "train", "tiny", "student",
                       partitions=partitions.from_mapping(SITE))
    # a CPU job too big for the CPU partitions goes where the plugin would send it: the GPU partition
    big = resources.size(_cfg(resources={"evaluate": {"mem_mb": 300000}}), "evaluate", "tiny", "teacher",
                         partitions=partitions.from_mapping(SITE))
    assert (big.mem_mb, big.partition) == (300000, "gpu")


def test_partition_choice_is_the_plugins():
    """medkd.partitions.score mirrors snakemake_executor_plugin_slurm's Partition.score_job_fit."""
    plugin = pytest.importorskip("snakemake_executor_plugin_slurm.partitions")
    site = REPO_ROOT / "profiles" / "site-slurm" / "profile.yaml"
    theirs = plugin.read_partition_file(site)
    ours = partitions.read(site)
    extra = {"fat": {"max_runtime": "3-00:00:00", "max_mem_mb": 1_000_000, "max_threads": 64},
             "a100": {"max_gpu": 8, "max_runtime": "12h", "max_mem_mb": 250000, "max_cpus_per_task": 16}}
    theirs += [plugin.Partition(name=k, limits=plugin.PartitionLimits(**dict(v))) for k, v in extra.items()]
    ours += partitions.from_mapping(extra)

    class Job:
        def __init__(self, runtime, mem_mb, gpu, threads):
            self.resources = {"runtime": runtime, "mem_mb": mem_mb, "gpu": gpu}
            self.threads, self.name = threads, "job"

    for runtime, mem, gpu, threads in [(60, 4000, 0, 1), (600, 4000, 1, 4), (5000, 4000, 0, 1), (60, 600000, 0, 8),
                                       (60, 4000, 2, 32), (700, 200000, 1, 1), (2000, 300000, 0, 100)]:
        job = Job(runtime, mem, gpu, threads)
        for t, o in zip(theirs, ours):
            want = t.score_job_fit(job)
            got = partitions.score(o, runtime, mem, gpu, threads)
            assert (got is None) == (want is None) and (got is None or got == pytest.approx(want)), (t.name, job.resources)
    assert partitions.minutes("1-12:00:00") == 2160 and partitions.minutes("2d12h") == 3600


def test_plan_sizes_every_job(tmp_path):
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"partitions": SITE, "config": {"gpu_speedup": 20}}))
    p = planmod.make_plan(_cfg(device="auto"), "tiny.yaml", results=tmp_path, measured=MEASURED, partitions=site)
    rules = p.rule_sizes["tiny"]
    assert rules["train"].jobs == 3 and rules["cache"].jobs == 1 and rules["evaluate"].jobs == 3
    assert dict(rules["train"].partitions) == {"gpu": 3} and dict(rules["evaluate"].partitions) == {"cpu": 3}
    assert rules["train"].measured == 3 and rules["train"].gpu_hours > 0
    assert p.rule_sizes["(data)"]["convert"].mem_mb == 2000  # 1310 x 1.5 = 1965 -> 2000
    text = planmod.format_plan(p)
    assert "gpu_speedup: 20" in text and "GPU-h meas." in text and not p.errors
    tight = tmp_path / "tight.yaml"
    tight.write_text(yaml.safe_dump({"partitions": {"gpu": {"max_gpu": 1, "max_mem_mb": 5000}}}))
    p = planmod.make_plan(_cfg(device="auto"), "tiny.yaml", results=tmp_path, measured=MEASURED, partitions=tight)
    assert any("`evaluate exp=tiny" in e for e in p.errors) is False  # a CPU job may use the GPU partition
    assert any("train exp=tiny, model=teacher" in e for e in p.errors)  # 3,184 + 4,000 MB host > 5,000
