"""config/paper.yaml: it validates, its models are the papers' (exact parameter counts, taps that exist, losses
that build), Snakemake plans the full DAG (local and SLURM profiles) with the gated datasets present as
placeholder files, and a missing gated dataset stops planning and `medkd fetch` with the list of missing paths.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from medkd.config import experiment_seeds, load_config
from medkd.data.sources.spec import load_datasets_yaml
from wfhelpers import REPO, copy_repo, planned_jobs, run, snakemake

pytestmark = pytest.mark.slow

PAPER = REPO / "config" / "paper.yaml"
# Parameter counts of the papers' models at paper scale (docs/sources.md: own counts, matching the authors' where
# they state one: MTMS Table 4.2 "0.057 M" / "0.227 M", KD-MRI "65 % fewer", VDSR "333K" / "185K").
PAPER_PARAMS = {
    "mtms_t1": 43_236_036, "mtms_t2": 172_625_028, "mtms_s1": 57_297, "mtms_s2": 227_233,
    "dccnn_teacher": 141_765, "dccnn_student": 49_285, "vdsr_teacher": 333_569, "vdsr_student": 185_857,
    "pcd_unet": 17_267_458, "brats_teacher": 8_639_778, "brats_student": 605_645, "identity": 0,
}  # brats_student: 608,589 in Keras counting, of which 2,944 BN statistics are buffers in PyTorch
# H-DenseFormer (hdenseformer_2d) by input side: the counts of the authors' HDenseFormer_2D_32 at these inputs
# (docs/sources.md 4.1); only its position embeddings depend on the size
HDENSEFORMER_PARAMS = {144: 4_181_192, 256: 5_074_152}


@pytest.fixture(scope="module")
def paper_cfg():
    return load_config(PAPER)


def test_paper_config_validates_and_covers_every_paper(paper_cfg):
    exps = paper_cfg["experiments"]
    prefixes = {"kdmri", "mtms", "pcd", "brats", "teachformer"}
    assert prefixes <= {e.split("_")[0] for e in exps}
    for name, exp in exps.items():
        assert exp.get("group") and exp.get("setting") and exp.get("headline"), name
        assert len(experiment_seeds(paper_cfg, name)) >= 3, name
    # every gated or downloaded dataset is a config/datasets.yaml entry with the same kind and converter
    specs = load_datasets_yaml(REPO / "config" / "datasets.yaml")
    for name, ds in paper_cfg["datasets"].items():
        spec = specs[ds.get("source", name)]
        assert spec["kind"] == ds["kind"], name
        assert spec["converter"] == ds["convert"]["format"], name


def test_reference_numbers_are_the_papers(paper_cfg):
    exps = paper_cfg["experiments"]
    refs = {(r["model"], r["metric"]): r["value"] for r in exps["kdmri_acdc_4x"]["reference"]}
    assert refs[("teacher", "psnr")] == 32.51 and refs[("student_kd", "ssim")] == 0.9084
    assert refs[("zero_filled", "psnr")] == 24.27
    knee8 = {(r["model"], r["metric"]): r["value"] for r in exps["kdmri_knee_8x"]["reference"]}
    # knee: per slice, as the code (one slice per file); the masks the code ships
    assert {r["convention"] for r in exps["kdmri_knee_8x"]["reference"]} == {"kdmri_per_slice"}
    assert exps["kdmri_knee_8x"]["headline"]["convention"] == "kdmri_per_slice"
    assert exps["kdmri_knee_8x"]["kspace"]["spec"] == {"kind": "file", "path": "data/kdmri_masks/knee/mask_8x.npy",
                                                      "axis": 1, "acceleration": 8}
    assert knee8[("student", "psnr")] == 31.92 and knee8[("student_kd_code", "psnr")] == 32.32
    sr = {(r["model"], r["metric"]): r["value"] for r in exps["kdmri_calgary_sr"]["reference"]}
    assert sr[("teacher", "psnr")] == 30.14 and sr[("zero_filled", "ssim")] == 0.8117
    mtms = {(r["model"], r["metric"]): r for r in exps["mtms_spleen"]["reference"]}
    assert mtms[("kd_t1_s2", "dice")]["value"] == 0.794 and mtms[("s1", "iou")]["value"] == 0.557
    assert mtms[("kd_t2_s2_code", "precision")]["value"] == 0.841
    # the code scores E-E + PMD (T1-S2) and B-B + D-D + PMD (T1-S1): the code-reading references sit there
    assert mtms[("kd_t1_s2_ee_code", "dice")]["value"] == 0.794 and mtms[("kd_t1_s1_bbdd_code", "iou")]["value"] == 0.629
    assert ("kd_t1_s2_code", "dice") not in mtms and ("kd_t1_s1_code", "dice") not in mtms
    assert exps["mtms_spleen"]["models"]["kd_t1_s2_code"]["teachers"] == ["t1_code"]
    assert {r["convention"] for r in mtms.values()} == {"mtms_pooled"}
    for name, exp in exps.items():  # every reference names a model of its experiment and a source
        for r in exp.get("reference", []):
            assert r["model"] in exp["models"] and r.get("source"), (name, r)
    assert not exps["pcd_busi"].get("reference")  # P-CD's tables could not be read: docs/not_reproduced.md


def test_papers_hyper_parameters(paper_cfg):
    exps = paper_cfg["experiments"]
    t = exps["kdmri_mrbrains_8x"]["models"]["teacher"]["train"]
    assert (t["epochs"], t["batch_size"], t["optimizer"]["lr"], t["scheduler"]["step_size"]) == (150, 4, 1e-3, 40)
    m = exps["mtms_spleen"]["models"]
    assert m["t2"]["train"]["optimizer"] == {"name": "adamw", "lr": 1e-4, "betas": [0.9, 0.95], "eps": 1e-8,
                                             "weight_decay": 0.05}
    assert (m["t1"]["train"]["epochs"], m["s1"]["train"]["epochs"], m["s1"]["train"]["optimizer"]["lr"]) == (200, 120, 1.5e-4)
    kd = m["kd_t1_s2"]["train"]
    assert (kd["optimizer"]["name"], kd["optimizer"]["lr"], kd["batch_size"], kd["drop_last"]) == ("rmsprop", 0.01, 20, True)
    assert exps["mtms_spleen"]["logit_threshold"] == 0.5
    p = exps["pcd_busi"]
    assert (len(p["split"]["fixed"]["train"]), len(p["split"]["fixed"]["test"])) == (680, 100)
    from collections import Counter  # P-CD's bus_train.json / bus_val.json class make-up (docs/sources.md 5.1)
    assert Counter(c.split("_")[0] for c in p["split"]["fixed"]["train"]) == {"benign": 382, "malignant": 184, "normal": 114}
    assert Counter(c.split("_")[0] for c in p["split"]["fixed"]["test"]) == {"benign": 55, "malignant": 26, "normal": 19}
    assert p["models"]["kd_tpl"]["train"]["epochs"] == 40 and p["models"]["kd_cpl"]["train"]["epochs"] == 100
    assert p["models"]["teacher"]["train"]["scheduler"] == {"name": "step", "step_size": 7, "gamma": 0.1}
    assert experiment_seeds(paper_cfg, "pcd_busi")[0] == 12345 and experiment_seeds(paper_cfg, "mtms_spleen")[0] == 42
    honest = exps["pcd_busi_honest"]["split"]["fixed"]
    assert honest["test"] == p["split"]["fixed"]["test"]
    assert sorted(honest["train"] + honest["val"]) == sorted(p["split"]["fixed"]["train"])


def _build_on_meta(arch: str, in_channels: int, out_channels: int, kwargs: dict):
    from medkd.models import build_model

    kwargs = dict(kwargs)
    out_channels = kwargs.pop("out_channels", out_channels)
    with torch.device("meta"):
        return build_model(arch, in_channels=in_channels, out_channels=out_channels, **kwargs)


def test_models_losses_and_taps_build(paper_cfg):
    """Every model of the paper config is instantiated (on the meta device: no memory), its parameter count is
    the paper's, every loss term builds with its kwargs and every module-path tap exists."""
    import medkd.distill  # noqa: F401  (registers the losses)
    from medkd.distill import LOSSES
    from medkd.models import count_parameters
    from medkd.config import model_spec
    from medkd.distill import LossContext

    checked = set()
    for exp_name, exp in paper_cfg["experiments"].items():
        seg = exp["task"] == "segmentation"
        out_ch = (len(exp["classes"]) if seg else 1)
        built = {}
        for name, m in exp["models"].items():
            model = _build_on_meta(m["arch"], len(exp["channels"]), out_ch, m["arch_kwargs"])
            built[name] = model
            if m["arch"] in PAPER_PARAMS:
                assert count_parameters(model) == PAPER_PARAMS[m["arch"]], (exp_name, name)
                checked.add(m["arch"])
            if m["arch"] == "hdenseformer_2d":
                assert count_parameters(model) == HDENSEFORMER_PARAMS[m["arch_kwargs"]["img_size"]], (exp_name, name)
                checked.add(m["arch"])
        for name, m in exp["models"].items():
            modules = dict(built[name].named_modules())
            spec = model_spec(paper_cfg, exp_name, name)
            # `weights: val_score` is resolved by the loss's setup hook from the teachers' summaries
            summaries = {t: {"best_val": {"val_dice": 0.5}} for t in spec.teachers}
            for term in spec.losses:
                LOSSES.get(term.loss)(**dict(term.kwargs)).setup(LossContext(term, summaries))
                for tap in term.student_taps:
                    assert tap == "out" or tap.startswith("out:") or tap in modules, (exp_name, name, tap)
            for teacher, taps in spec.teacher_taps().items():
                tmods = dict(built[teacher].named_modules())
                for tap in taps:
                    assert tap.startswith(("cache:", "out")) or tap in tmods, (exp_name, name, teacher, tap)
            if m["train"]["val_split"] not in ("val",):  # a cached teacher only covers train + val
                assert not spec.cached_teachers(), (exp_name, name)
    assert set(PAPER_PARAMS) - {"identity"} | {"hdenseformer_2d"} <= checked


# ------------------------------------------------------------------------------------------ Snakemake


def _placeholders(base: Path, expected: list[dict]) -> None:
    """Empty files and folders satisfying a datasets.yaml `expected` list (every `*` -> a case number)."""
    for entry in expected:
        path = entry["path"]
        if not any(c in path for c in "*?["):
            target = base / path
            if path.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
            continue
        for i in range(entry.get("count", entry.get("min_count", 1))):
            target = base / path.replace("*", f"{i + 1:04d}").replace("?", "0")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()




@pytest.fixture(scope="module")
def paper_repo(tmp_path_factory):
    """A copy of the repository whose data/ holds placeholder files for every gated (manual) dataset."""
    wd = copy_repo(tmp_path_factory.mktemp("paper") / "repo")
    specs = load_datasets_yaml(wd / "config" / "datasets.yaml")
    cfg = yaml.safe_load((wd / "config" / "paper.yaml").read_text())
    manual = []
    for name, ds in cfg["datasets"].items():
        source = ds.get("source", name)
        if specs[source]["kind"] == "manual":
            _placeholders(wd / "data" / source, specs[source]["expected"])
            manual.append(source)
    assert manual
    for exp in load_config(wd / "config" / "paper.yaml", root=wd)["experiments"].values():
        # KD-MRI's shipped masks (not redistributed): placeholders
        spec = exp.get("kspace", {}).get("spec", {})
        if spec.get("kind") == "file":
            (wd / spec["path"]).parent.mkdir(parents=True, exist_ok=True)
            (wd / spec["path"]).touch()
    return wd, manual


def test_dry_run_plans_every_experiment(paper_repo, paper_cfg):
    wd, _ = paper_repo
    proc = snakemake(["-n", "results/tables/all.csv", "--configfile", "config/paper.yaml"], wd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:] + proc.stdout[-4000:]
    jobs = planned_jobs(proc.stdout)
    runs = sum(len(e["models"]) * len(experiment_seeds(paper_cfg, n)) for n, e in paper_cfg["experiments"].items())
    assert jobs["train"] == runs and jobs["infer"] == runs and jobs["evaluate"] == runs
    assert jobs["tables"] == len(paper_cfg["experiments"]) and jobs["collect"] == 1
    used = {e["dataset"] for e in paper_cfg["experiments"].values()}
    assert jobs["fetch_source"] == jobs["convert"] == len(used)
    for exp, cfg in paper_cfg["experiments"].items():
        for model in cfg["models"]:
            seed = experiment_seeds(paper_cfg, exp)[0]
            assert f"results/{exp}/models/{model}/seed{seed}/model.pt" in proc.stdout, (exp, model)
    assert "--out data/acdc" in proc.stdout  # the gated datasets are verified by the fetch_source rule

    from medkd.plan import count_jobs

    assert dict(count_jobs(paper_cfg)) == jobs  # `medkd plan` counts what Snakemake plans

    # The template site's GPU partition (48 h) cannot take KD-MRI's Calgary training jobs, sized from the
    # rehearsal's measurements (config/measured/paper_cpu.csv) even over three submissions: planning stops
    # naming the job, its need and the partitions, before anything is submitted.
    template = snakemake(["-n", "results/tables/all.csv", "--configfile", "config/paper.yaml",
                          "--profile", "profiles/site-slurm", "--workflow-profile", "profiles/slurm"], wd, timeout=300)
    said = template.stdout + template.stderr
    assert template.returncode != 0
    assert re.search(r"job `train exp=kdmri_calgary_sr, model=\w+.*` needs a GPU, [\d,]+ min \(over at most 3 "
                     r"submissions, resuming from last.pt\)", said), said[-3000:]
    assert "gpu (max_runtime 2,880 min" in said
    # a site whose GPU partition allows a week takes every job
    site = wd / "site7d"
    site.mkdir()
    text = (wd / "profiles" / "site-slurm" / "profile.yaml").read_text()
    text = text.replace("max_runtime: 2880", "max_runtime: 10080").replace(
        "partition_file: profiles/site-slurm/profile.yaml", "partition_file: site7d/profile.yaml")
    (site / "profile.yaml").write_text(text)
    slurm = snakemake(["-n", "results/tables/all.csv", "--configfile", "config/paper.yaml",
                       "--profile", "site7d", "--workflow-profile", "profiles/slurm"], wd, timeout=300)
    assert slurm.returncode == 0, slurm.stderr[-4000:]
    assert planned_jobs(slurm.stdout) == jobs
    blocks = {}
    for block in slurm.stdout.split("\nrule ")[1:]:
        blocks.setdefault(block.split(":", 1)[0], []).append(block)
    for rule in ("train", "cache", "infer", "robustness"):
        assert all("gpu=1" in b for b in blocks[rule]), rule  # device auto: every network job asks for a GPU
    assert all("gpu=" not in b for b in blocks["evaluate"] + blocks["convert"])
    runtimes = {re.search(r"wildcards: exp=(\w+), model=(\w+)", b).groups(): int(re.search(r"runtime=(\d+)", b).group(1))
                for b in blocks["train"]}
    # measured: the 43 M-parameter MTMS teacher needs more than its 1.7 M student; Calgary's jobs ask for the
    # partition's limit (they resume from last.pt over several submissions)
    assert runtimes[("mtms_spleen", "t1")] > 3 * runtimes[("mtms_spleen", "s1")]
    assert runtimes[("kdmri_calgary_sr", "teacher")] == 10080
    assert all(10 <= r <= 10080 for r in runtimes.values())
    assert "slurm_account=your_account" in slurm.stdout


def test_missing_gated_dataset_is_named(paper_repo):
    wd, manual = paper_repo
    source = "acdc" if "acdc" in manual else manual[0]
    backup = wd / f".{source}-moved"
    shutil.move(wd / "data" / source, backup)
    (wd / "data" / source / "training").mkdir(parents=True)  # a partial placement: the folder but no patient
    try:
        proc = snakemake(["-n", "results/tables/all.csv", "--configfile", "config/paper.yaml"], wd, timeout=300)
        assert proc.returncode != 0
        text = proc.stdout + proc.stderr
        assert f"Dataset '{source}' must be provided by hand" in text
        assert f"data/{source}/training/patient*/Info.cfg   (pattern: 0 found, exactly 100 expected)" in text

        spec = '{"kind": "manual", "source": "%s"}' % source
        fetch = run([str(wd / "workflow" / "scripts" / "medkd"), "fetch", "--dataset", source, "--dataset-spec", spec,
                     "--out", f"data/{source}"], wd, timeout=120)
        assert fetch.returncode == 2, fetch.stderr
        lines = [ln.strip() for ln in fetch.stderr.splitlines()]
        assert f"data/{source}/testing/patient*/Info.cfg   (pattern: 0 found, exactly 50 expected)  - one folder per " \
               "testing patient" in lines
        assert not any(ln.startswith(f"data/{source}/training/ ") for ln in lines)  # the folder is there
        assert "Traceback" not in fetch.stderr and "Request the data at: https://" in fetch.stderr
    finally:
        shutil.rmtree(wd / "data" / source)
        shutil.move(backup, wd / "data" / source)
    ok = run([str(wd / "workflow" / "scripts" / "medkd"), "fetch", "--dataset", source, "--dataset-spec",
              '{"kind": "manual", "source": "%s"}' % source, "--out", f"data/{source}"], wd, timeout=120)
    assert ok.returncode == 0, ok.stderr
    marker = wd / "data" / source / ".medkd-fetched.json"
    assert marker.is_file()  # present again: verified, marker written
    marker.unlink()


def test_several_missing_gated_datasets_are_listed_at_once(paper_repo):
    wd, manual = paper_repo
    gone = manual[:3]
    assert len(gone) >= 2
    for source in gone:
        shutil.move(wd / "data" / source, wd / f".{source}-moved")
    try:
        proc = snakemake(["-n", "results/tables/all.csv", "--configfile", "config/paper.yaml"], wd, timeout=300)
        assert proc.returncode != 0
        text = proc.stdout + proc.stderr
        assert f"{len(gone)} datasets are missing or incomplete" in text
        for source in gone:
            assert f"Dataset '{source}' must be provided by hand" in text
    finally:
        for source in gone:
            shutil.move(wd / f".{source}-moved", wd / "data" / source)
