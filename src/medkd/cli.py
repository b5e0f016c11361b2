"""``medkd <step>``: one subcommand per pipeline stage (and per Snakemake rule), with explicit paths.

Every step can be run by hand, e.g.::

    medkd spec --config config/config.yaml --experiment seg_hinton --model student_kd > spec.json
    medkd train --spec-file spec.json --seed 0 --store results/slices/embedded.h5 \
        --split results/splits/seg_hinton.json --cache teacher=results/seg_hinton/cache/teacher/seed0.h5 \
        --out results/seg_hinton/models/student_kd/seed0

Configuration reaches a step as JSON (the dataset entry, the experiment entry, or a model's resolved
spec), exactly as Snakemake passes it; ``medkd spec`` prints any of them from a config file.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def _load_spec(args):
    """The typed model spec of ``--spec`` / ``--spec-file`` (validated against the schema)."""
    from medkd.spec import ModelSpec

    return ModelSpec.from_json(Path(args.spec_file).read_text() if args.spec_file else args.spec)


def _run_settings(args):
    """The run settings (not hashed) of a step that runs a network, from its command line."""
    from medkd.runtime import RunSettings

    return RunSettings(device=args.device, threads=args.threads, channels_last=args.channels_last,
                       cudnn_benchmark=args.cudnn_benchmark, deterministic=args.deterministic,
                       data_memory_mb=_data_memory_mb(args))


def _data_memory_mb(args) -> float:
    """``--data-memory-mb``, or the default of medkd.datasets (imported only by the steps that load data)."""
    from medkd.resources import DEFAULT_DATA_MEMORY_MB

    return DEFAULT_DATA_MEMORY_MB if args.data_memory_mb is None else args.data_memory_mb


THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS",
                    "VECLIB_MAXIMUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")


def limit_threads(n: int) -> None:
    """Hold every step to ``--threads`` CPUs (Snakemake's ``{threads}``, the CPUs a SLURM job was given): the
    thread variables of OpenMP/BLAS/ITK for libraries imported later, and torch's intra-op threads when torch
    is already imported (a job forked from the fork server). Steps that run a network set torch's threads
    again through their run settings."""
    import os

    for var in THREAD_VARIABLES:
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _pairs(values: list[str] | None) -> dict[str, Path]:
    out = {}
    for v in values or []:
        name, _, path = v.partition("=")
        if not path:
            raise SystemExit(f"expected NAME=PATH, got {v!r}")
        out[name] = Path(path)
    return out


def _check_model_inputs(model_dir, store) -> None:
    """The model directory is complete and the store is the one it was trained on (its recorded MD5)."""
    from medkd.integrity import check_store_hash, reading
    from medkd.io import read_json

    summary_path = Path(model_dir) / "summary.json"
    summary = read_json(summary_path)
    with reading(summary_path, "model summary"):
        for key in ("spec_hash", "data_hash", "model", "seed"):
            if key not in summary:
                raise KeyError(f"missing key {key!r}")
    check_store_hash(store, summary.get("data_hash"), str(summary_path))


def cmd_fetch(args) -> None:
    """Generate (embedded), download (download) or verify (manual) one dataset.

    ``--dataset-spec`` is the config entry (or, from the ``fetch_source`` rule, ``{"kind", "source"}``).
    Download and manual datasets are looked up in ``--datasets-yaml`` under ``source`` (default: the
    dataset's name) and land in ``<parent of --out>/<source>``, which must be ``--out`` itself. A manual
    dataset with missing files raises :class:`medkd.data.sources.fetch.ManualDatasetMissing`, whose message lists
    one missing path per line and where to request the data (``main`` turns it into exit code 2). A spec with
    ``"standin": {generator, seed, version}`` (config ``standin_data: true``) writes the source's generated
    stand-in (:mod:`medkd.data.standins`) instead.
    """
    ds = json.loads(args.dataset_spec)
    log = logging.getLogger("medkd")
    if ds["kind"] == "embedded":
        from medkd.config import validate_part
        from medkd.data.embedded import generate_embedded

        generator = validate_part("/$defs/dataset/properties/generator", ds.get("generator", {}),
                                  f"dataset {args.dataset} generator")
        generate_embedded(args.out, **generator, workers=args.threads)
        return
    from medkd.data.sources.fetch import fetch_dataset
    from medkd.data.sources.spec import load_datasets_yaml

    if args.datasets_yaml is None:  # the repository's, whatever the working directory (snakemake --directory)
        from medkd.config import REPO_ROOT

        args.datasets_yaml = str(REPO_ROOT / "config" / "datasets.yaml")
    specs = load_datasets_yaml(args.datasets_yaml)
    source = ds.get("source", args.dataset)
    if source not in specs:
        raise ValueError(f"dataset {args.dataset!r}: source {source!r} is not in {args.datasets_yaml} "
                         f"(known: {', '.join(specs)})")
    if specs[source]["kind"] != ds["kind"]:
        raise ValueError(f"dataset {args.dataset!r} says kind {ds['kind']!r}, but {args.datasets_yaml} entry "
                         f"{source!r} is {specs[source]['kind']!r}")
    out = Path(args.out)
    if out.name != source:
        raise ValueError(f"--out {out} must be <data_root>/{source} (the source's folder)")
    target = fetch_dataset(source, specs[source], out.parent, progress=sys.stderr.isatty(),
                           standin=ds.get("standin"))
    log.info("%s ready in %s; record the raw data with `dvc add %s` (see docs/datasets.md)", source, target,
             out.parent)


def cmd_convert(args) -> None:
    """Raw dataset folder -> slice store + fingerprint JSON, with the converter of ``convert.format``."""
    from medkd.data.formats import convert_dataset
    from medkd.data.store import SliceStore
    from medkd.io import write_json
    from medkd.io import file_md5

    from medkd.config import validate_part

    c = validate_part("/$defs/dataset/properties/convert", json.loads(args.convert_spec), f"dataset {args.dataset} convert")
    convert_dataset(c["format"], args.src, args.out, c, dataset=args.dataset)
    with SliceStore(args.out) as store:
        n_slices = sum(store.n_slices(cid) for cid in store.case_ids)
        provenance = store.attrs.get("provenance") or {}
        constant = provenance.get("constant_images", [])
        fingerprint = {"dataset": args.dataset, "md5": file_md5(args.out), "cases": store.case_ids,
                       "n_cases": len(store.case_ids), "n_slices": n_slices, "convert": c,
                       "channel_names": store.attrs.get("channel_names"), "label_names": store.attrs.get("label_names"),
                       "constant_images": constant}
        if provenance.get("source_warnings"):  # what the source's own metadata contradicts (e.g. numTraining)
            fingerprint["source_warnings"] = list(provenance["source_warnings"])
        if provenance.get("standin"):  # generated rehearsal data (config standin_data), never the real dataset
            fingerprint["standin"] = True
            fingerprint["standin_source"] = provenance.get("standin_source")
    if constant:
        logging.getLogger("medkd").warning(
            "%s: %d case(s) have a constant image channel (normalised to a constant): %s", args.dataset,
            len(constant), ", ".join(c_["case"] for c_ in constant))
    write_json(args.fingerprint, fingerprint)


def cmd_split(args) -> None:
    from medkd.data.splits import make_split, write_split
    from medkd.io import read_json

    from medkd.integrity import reading

    s = json.loads(args.split_spec)
    fingerprint = read_json(args.fingerprint)
    with reading(args.fingerprint, "dataset fingerprint"):
        cases = list(fingerprint["cases"])
        if not cases or not all(isinstance(c, str) for c in cases):
            raise ValueError("'cases' is not a non-empty list of case ids")
    fixed = s.get("fixed")
    if fixed and fingerprint.get("standin"):
        # stand-in data holds a few of the real case ids: keep those the paper's fixed split lists
        from medkd.data.standins import restrict_fixed_split

        fixed = restrict_fixed_split(fixed, cases)
        logging.getLogger("medkd").warning(
            "stand-in data: fixed split cut to the stand-in's cases (%s)",
            ", ".join(f"{k} {len(v)} of {len(s['fixed'][k])}" for k, v in fixed.items()))
    from medkd.errors import InputError

    try:
        split = make_split(cases, s["seed"], fractions=s["fractions"], subsets=s.get("subsets"), fixed=fixed)
    except ValueError as exc:  # the experiment's `split` does not fit this dataset: one line, not a traceback
        raise InputError(f"{args.fingerprint}: the experiment's split does not fit this dataset: {exc}") from exc
    write_split(split, args.out)


def cmd_undersample(args) -> None:
    from medkd.data.kspace import write_kspace_store

    print(json.dumps(write_kspace_store(args.store, args.out, json.loads(args.mask_spec)), default=str))


def cmd_spec(args) -> None:
    from medkd.config import load_config, model_spec

    cfg = load_config(args.config)
    if args.model:
        out = model_spec(cfg, args.experiment, args.model).to_dict()
    elif args.experiment:
        out = cfg["experiments"][args.experiment]
    elif args.dataset:
        out = cfg["datasets"][args.dataset]
    else:
        out = cfg
    print(json.dumps(out, indent=2, sort_keys=True))


def cmd_plan(args) -> None:
    """Jobs per rule, dataset sizes and GPU-hours of a config, before anything is submitted (medkd.plan)."""
    from medkd.config import load_config
    from medkd.plan import DEFAULT_TFLOPS, calibrate, format_plan, make_plan

    tflops, source = args.tflops or DEFAULT_TFLOPS, "effective (assumed; --tflops)"
    if args.calibrate:
        tflops, n = calibrate(args.calibrate)
        source = f"measured on {n} finished runs under {args.calibrate}"
    plan = make_plan(load_config(args.config), args.config, results=args.results, tflops=tflops,
                     tflops_source=source, overhead_min=args.overhead_min, measured=args.measured,
                     partitions=args.partitions or None)
    print(format_plan(plan, per_model=not args.summary))
    if plan.errors:
        raise SystemExit(1)


def cmd_train(args) -> None:
    from medkd.integrity import check_store_hash, reading
    from medkd.io import read_json
    from medkd.train import TrainInputs, train

    spec = _load_spec(args)
    data_hash = None
    if args.fingerprint:
        fingerprint = read_json(args.fingerprint)
        with reading(args.fingerprint, "dataset fingerprint"):
            data_hash = fingerprint["md5"]
        check_store_hash(args.store, data_hash, args.fingerprint)
    inputs = TrainInputs(
        store=Path(args.store), split=Path(args.split), teacher_dirs=_pairs(args.teacher_dir),
        caches=_pairs(args.cache), init_dir=Path(args.init_dir) if args.init_dir else None,
        teacher_summaries=_pairs(args.teacher_summary),
        data_hash=data_hash,
    )
    summary = train(spec, args.seed, inputs, args.out, _run_settings(args))
    logging.getLogger("medkd").info("best %s %.4f at epoch %s", summary["select_metric"], summary["best_score"],
                                    summary["best_epoch"])


def cmd_cache(args) -> None:
    from medkd.cache import build_cache

    _check_model_inputs(args.teacher_dir, args.store)
    extra = {"splits": args.splits.split(",")} if args.splits else {}
    print(json.dumps(build_cache(args.teacher_dir, args.store, args.split, args.out, settings=_run_settings(args),
                                 **extra)))


def cmd_infer(args) -> None:
    from medkd.infer import predict

    _check_model_inputs(args.model_dir, args.store)
    print(json.dumps(predict(args.model_dir, args.store, args.split, args.out, split_name=args.split_name,
                             settings=_run_settings(args))))


def cmd_rehearsal_resources(args) -> None:
    from medkd import rehearsal

    rows = rehearsal.collect(args.run_dir)
    if not rows:
        raise ValueError(f"{args.run_dir}: no finished job logs under results/logs (did the rehearsal run?)")
    rehearsal.write(rows, args.out)
    print(rehearsal.summary(rows, args.wall_seconds))
    print(f"{len(rows)} jobs -> {args.out}")


def cmd_standin_mask(args) -> None:
    import numpy as np

    from medkd.data.kspace import mask_facts
    from medkd.data.standins import KDMRI_MASKS, kdmri_mask
    from medkd.io import atomic_path

    mask = kdmri_mask(args.organ, args.acceleration)
    facts = mask_facts(mask, KDMRI_MASKS[args.organ]["axis"], acceleration=args.acceleration)
    with atomic_path(args.out) as tmp, open(tmp, "wb") as fh:
        np.save(fh, mask)
    print(f"stand-in KD-MRI mask {args.organ} {args.acceleration}x: {mask.shape} {mask.dtype}, "
          f"{facts['sampled_lines']} sampled lines, {facts['centre_lines']} centre lines -> {args.out}")


def cmd_evaluate(args) -> None:
    from medkd.evaluate import evaluate

    _check_model_inputs(args.model_dir, args.store)
    n = evaluate(args.predictions, args.model_dir, args.store, args.split, args.out, conventions=args.conventions,
                 logit_threshold=args.logit_threshold, regions=json.loads(args.regions),
                 data_memory_mb=_data_memory_mb(args))
    print(f"{n} rows -> {args.out}")


def cmd_robustness(args) -> None:
    from medkd.robustness import evaluate_robustness

    from medkd.config import validate_part

    _check_model_inputs(args.model_dir, args.store)
    r = validate_part("/$defs/experiment/properties/robustness", json.loads(args.robustness_spec), "robustness spec")
    n = evaluate_robustness(args.model_dir, args.store, args.split, args.out, r["corruptions"], r["severities"],
                            seed=r["seed"], metric=r["metric"], settings=_run_settings(args))
    print(f"{n} rows -> {args.out}")


def cmd_robustness_table(args) -> None:
    from medkd.robustness import write_robustness_outputs

    write_robustness_outputs(args.experiment, args.inputs, {"csv": args.csv, "md": args.md, "png": args.png})


def cmd_tables(args) -> None:
    from medkd.report import write_experiment_outputs

    exp = json.loads(args.experiment_spec)
    exp["models"] = {m: exp["models"][m] for m in args.model_order}  # JSON params sort keys; restore config order
    write_experiment_outputs(args.experiment, exp, args.metrics, args.model_dirs,
                             {"csv": args.csv, "md": args.md, "tex": args.tex, "png": args.png, "curves": args.curves,
                              "stats": args.stats, "verdicts": args.verdicts},
                             health_cfg=json.loads(args.health_spec), stats_cfg=json.loads(args.stats_spec))


def cmd_paper_table(args) -> None:
    from medkd.report import paper_table

    exps = json.loads(args.experiments_spec)
    ordered = {e: {**exps[e], "models": {m: exps[e]["models"][m] for m in order.split(",")}}
               for e, order in (x.split(":", 1) for x in args.order)}
    paper_table(args.group, ordered, dict(zip(ordered, args.tables)), args.csv, args.md,
                verdicts=dict(zip(ordered, args.verdicts)) if args.verdicts else None)


def cmd_track(args) -> None:
    from medkd.tracking import sync_runs

    runs = []
    for md, mc in zip(args.model_dirs, args.metrics):
        parts = Path(md).parts  # results/<exp>/models/<model>/seed<k>
        exp, model, seed = parts[-4], parts[-2], parts[-1]
        runs.append({"key": f"{exp}/{model}/{seed}", "experiment": exp, "model": model, "seed": int(seed[4:]),
                     "model_dir": md, "metrics_csv": mc, "table_md": str(Path(args.tables_dir) / f"{exp}.md")})
    ids = sync_runs(runs, args.tracking_uri, args.prefix, args.artifact_root, args.out,
                    experiments=json.loads(args.experiments_json), log_models=not args.no_models)
    print(f"{len(ids)} runs mirrored in {args.tracking_uri}")


def cmd_panels(args) -> None:
    from medkd.panels import write_panels

    exp = json.loads(args.experiment_spec)
    preds = _pairs(args.predictions)
    slices = write_panels(args.experiment, exp, preds, args.model_dir, args.store, args.split, args.png, args.seed,
                          n_cases=args.n_cases)
    print(f"{len(slices)} slices, {len(preds)} models -> {args.png}")


def cmd_report_pages(args) -> None:
    from medkd.reportpages import write_experiment_pages

    exp = json.loads(args.experiment_spec)
    exp["models"] = {m: exp["models"][m] for m in args.model_order}
    write_experiment_pages(args.experiment, exp, args.table, args.stats, args.verdicts, args.model_dirs, args.metrics,
                           args.out_dir, paper_csv=args.paper_table, robustness_csv=args.robustness,
                           runs_json=args.runs)


def cmd_paper_numbers(args) -> None:
    from medkd.config import load_config
    from medkd.reportpages import write_paper_numbers

    run = json.loads(args.run_summary)
    df = write_paper_numbers(run, load_config(args.paper_config), args.verdicts, args.not_reproduced, args.csv,
                             args.html, paper_config_name=args.paper_config)
    print(f"{len(df)} paper numbers -> {args.csv}")


def cmd_overview(args) -> None:
    from medkd.io import read_json
    from medkd.reportpages import write_overview

    fps = {Path(p).stem: read_json(p) for p in args.fingerprints}
    write_overview(json.loads(args.run_summary), args.config_files, args.all, args.model_dirs, fps,
                   args.paper_numbers, args.logs_dir, args.out, reproduced_csv=args.reproduced)


def cmd_collect(args) -> None:
    from medkd.report import collect

    df = collect(args.tables, args.runs, args.out, robustness=args.robustness, health_md=args.health_md)
    print(f"{len(df)} rows -> {args.out}")


def cmd_reproduced(args) -> None:
    from medkd.io import read_json
    from medkd.reproduced import run

    about = read_json(args.about) if args.about else None
    lines = run(args.table, args.reference, json.loads(args.tolerances), args.csv, args.md, about=about)
    print("\n".join(lines))


def cmd_reference(args) -> None:
    """Write a reference run (the comparison's ``reference_run``) from a finished run's all.csv: the matched
    columns only (no latency), and beside it a JSON of where and with which kernels it was made, read from
    the ``env.json`` of the run's models (``results/<exp>/models/<model>/seed<k>/``, beside ``results/tables``)."""
    import datetime

    import pandas as pd

    from medkd.io import atomic_path, read_json
    from medkd.reproduced import KEYS, NOT_COMPARED

    table = pd.read_csv(args.table)
    results = Path(args.table).resolve().parents[1]
    envs = [read_json(p) for p in sorted({results / e / "models" / m / f"seed{k}" / "env.json"
                                           for e, m, seeds in zip(table["experiment"], table["model"], table["seeds"])
                                           for k in str(seeds).split(";")}) if p.is_file()]
    if not envs:
        raise FileNotFoundError(f"{results}: no env.json of the run's models; the reference needs a finished run")
    table = table[~table["convention"].isin(NOT_COMPARED)]
    keep = [*KEYS, "mean", "sd", "n_seeds", "n_cases", "health"]
    with atomic_path(args.out) as tmp:
        table[[c for c in keep if c in table.columns]].to_csv(tmp, index=False, float_format="%.8g")

    def distinct(values):
        return [json.loads(v) for v in sorted({json.dumps(x, sort_keys=True) for x in values})]

    about = {"made": datetime.date.today().isoformat(),
             "git_commit_of_the_jobs": sorted(set(table["git_commit"].dropna().astype(str))),
             "models": len(envs), "platform": distinct(e.get("platform") for e in envs),
             "torch": distinct(e.get("torch") for e in envs), "kernels": distinct(e.get("kernels") for e in envs)}
    with atomic_path(Path(args.out).with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(about, indent=2, sort_keys=True) + "\n")
    print(f"{len(table)} rows -> {args.out} (+ {Path(args.out).with_suffix('.json').name}, kernels of "
          f"{len(envs)} models)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medkd", description=__doc__.split("\n")[0])
    p.add_argument("-v", "--verbose", action="store_true")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, func, help_):
        sp = sub.add_parser(name, help=help_)
        sp.set_defaults(func=func)
        sp.add_argument("--threads", type=int, default=1,
                        help="run setting (not hashed): CPUs of this step (torch, OpenMP, BLAS, ITK threads)")
        return sp

    def add_run_settings(sp):
        sp.add_argument("--device", default="auto", help="run setting (not hashed): auto | cpu | cuda")
        sp.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default="auto",
                        help="run setting: NHWC model and batches (--no-channels-last: as built; default: the "
                             "architecture's own choice on CPU, see medkd.runtime.RunSettings.nhwc)")
        sp.add_argument("--cudnn-benchmark", action="store_true", help="run setting: cuDNN autotuning")
        sp.add_argument("--deterministic", action="store_true",
                        help="run setting: deterministic algorithms only (wins over --cudnn-benchmark)")
        add_data_memory(sp)

    def add_data_memory(sp):
        sp.add_argument("--data-memory-mb", type=float, default=None,
                        help="run setting: MB of slice data held in memory; larger splits and caches are read "
                             "from their stores batch by batch (default medkd.resources.DEFAULT_DATA_MEMORY_MB)")

    def add_spec(sp):
        g = sp.add_mutually_exclusive_group(required=True)
        g.add_argument("--spec", help="resolved model spec as JSON")
        g.add_argument("--spec-file", help="file holding the resolved model spec")

    sp = add("fetch", cmd_fetch, "generate, download or verify a dataset under data/<dataset>")
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--dataset-spec", required=True, help="the dataset's config entry as JSON")
    sp.add_argument("--out", required=True, help="data/<dataset>")
    sp.add_argument("--datasets-yaml", default=None, help="default: the repository's config/datasets.yaml")

    sp = add("convert", cmd_convert, "NIfTI (MSD layout) -> slice store HDF5 + fingerprint JSON")
    for a in ("--dataset", "--convert-spec", "--src", "--out", "--fingerprint"):
        sp.add_argument(a, required=True)

    sp = add("split", cmd_split, "seeded case-level split JSON of an experiment")
    for a in ("--split-spec", "--fingerprint", "--out"):
        sp.add_argument(a, required=True)

    sp = add("undersample", cmd_undersample, "masks + undersampled k-space + zero-filled images (or SR inputs)")
    for a in ("--mask-spec", "--store", "--out"):
        sp.add_argument(a, required=True)

    sp = add("spec", cmd_spec, "print the validated config, or one dataset, experiment or model spec, as JSON")
    sp.add_argument("--config", required=True)
    for a in ("--experiment", "--model", "--dataset"):
        sp.add_argument(a)

    sp = add("plan", cmd_plan, "jobs per rule and estimated GPU-hours of a config, before submitting it")
    sp.add_argument("--config", required=True)
    sp.add_argument("--results", default="results", help="where converted datasets' fingerprints are looked up")
    sp.add_argument("--tflops", type=float, help="sustained TFLOP/s of one GPU (default: medkd.plan.DEFAULT_TFLOPS)")
    sp.add_argument("--calibrate", metavar="DIR", help="measure the TFLOP/s from finished runs' summary.json under DIR")
    sp.add_argument("--overhead-min", type=float, default=2.0, help="start-up minutes per GPU job")
    sp.add_argument("--summary", action="store_true", help="totals only, no row per training job")
    sp.add_argument("--measured", metavar="CSV", help="the rehearsal's measurements (default: the config's sizing.measured)")
    sp.add_argument("--partitions", metavar="FILE", default="profiles/site-slurm/profile.yaml",
                    help="the site's partition file / site profile (default: the template "
                         "profiles/site-slurm/profile.yaml; '' for none)")

    sp = add("train", cmd_train, "train one model (teacher or student) for one seed; resumes if interrupted")
    add_spec(sp)
    sp.add_argument("--seed", type=int, required=True)
    for a in ("--store", "--split", "--out"):
        sp.add_argument(a, required=True)
    sp.add_argument("--fingerprint", help="dataset fingerprint JSON (its md5 is recorded as the data hash)")
    sp.add_argument("--teacher-dir", action="append", metavar="NAME=DIR", help="online teacher model dir")
    sp.add_argument("--cache", action="append", metavar="NAME=FILE", help="teacher cache file")
    sp.add_argument("--init-dir", help="model dir whose model.pt initialises this model")
    sp.add_argument("--teacher-summary", action="append", metavar="NAME=FILE",
                    help="summary.json of a teacher (its best validation score weights multi-teacher terms)")
    add_run_settings(sp)

    for name, func, help_ in (("cache", cmd_cache, "teacher logits and uncertainty maps on train+val"),
                              ("infer", cmd_infer, "predict the test split")):
        sp = add(name, func, help_)
        sp.add_argument("--teacher-dir" if name == "cache" else "--model-dir", required=True)
        for a in ("--store", "--split", "--out"):
            sp.add_argument(a, required=True)
        add_run_settings(sp)
        if name == "infer":
            sp.add_argument("--split-name", default="test")
        else:
            sp.add_argument("--splits", metavar="NAME[,NAME...]",
                            help="split or subset names whose cases are cached (default: train,val)")

    sp = add("rehearsal-resources", cmd_rehearsal_resources,
             "per job of a rehearsal: wall time, peak RSS, step time (resources.csv) and a summary")
    sp.add_argument("--run-dir", required=True, help="the rehearsal's working directory (results/rehearsal)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--wall-seconds", type=float, default=None, help="the whole run's wall time, for the summary")

    sp = add("standin-mask", cmd_standin_mask, "a stand-in of a KD-MRI shipped line mask (rehearsals)")
    sp.add_argument("--organ", required=True, help="cardiac | mrbrain | knee")
    sp.add_argument("--acceleration", type=int, required=True)
    sp.add_argument("--out", required=True)

    sp = add("evaluate", cmd_evaluate, "per-case metrics CSV of a predictions file")
    for a in ("--predictions", "--model-dir", "--store", "--split", "--out"):
        sp.add_argument(a, required=True)
    sp.add_argument("--conventions", nargs="+", default=["engine"])
    sp.add_argument("--logit-threshold", type=float, default=0.0, help="mtms_pooled threshold on raw logits")
    sp.add_argument("--regions", default="{}", help="JSON {region: [class names]} scored as unions")
    add_data_memory(sp)

    sp = add("robustness", cmd_robustness, "score one model on corrupted copies of the test split")
    for a in ("--model-dir", "--store", "--split", "--out", "--robustness-spec"):
        sp.add_argument(a, required=True)
    add_run_settings(sp)

    sp = add("robustness-table", cmd_robustness_table, "robustness table and plot of one experiment")
    for a in ("--experiment", "--csv", "--md", "--png"):
        sp.add_argument(a, required=True)
    sp.add_argument("--inputs", nargs="+", required=True)

    sp = add("tables", cmd_tables, "tables and figures of one experiment")
    sp.add_argument("--experiment", required=True)
    sp.add_argument("--experiment-spec", required=True, help="the experiment's config entry as JSON")
    for a in ("--csv", "--md", "--tex", "--png", "--curves"):
        sp.add_argument(a, required=True)
    sp.add_argument("--metrics", nargs="+", required=True)
    sp.add_argument("--model-dirs", nargs="+", required=True)
    sp.add_argument("--model-order", nargs="+", required=True, help="model names in config order")
    sp.add_argument("--stats", help="CSV of every paired comparison of the experiment (<exp>_stats.csv)")
    sp.add_argument("--verdicts", help="CSV of the paper's numbers with our interval and verdict (<exp>_verdicts.csv)")
    sp.add_argument("--health-spec", default="{}", help="the config's health bounds as JSON (default: schema defaults)")
    sp.add_argument("--stats-spec", default="{}", help="the config's stats settings as JSON (default: schema defaults)")

    sp = add("paper-table", cmd_paper_table, "the paper's table layout for a group of experiments")
    for a in ("--group", "--experiments-spec", "--csv", "--md"):
        sp.add_argument(a, required=True)
    sp.add_argument("--order", nargs="+", required=True, help="exp:model1,model2,... in config order")
    sp.add_argument("--tables", nargs="+", required=True, help="the experiments' long tables, same order")
    sp.add_argument("--verdicts", nargs="*", default=[], help="the experiments' <exp>_verdicts.csv, same order")

    sp = add("track", cmd_track, "mirror every run into MLflow (single writer)")
    for a in ("--out", "--tables-dir", "--artifact-root", "--tracking-uri", "--prefix"):
        sp.add_argument(a, required=True)
    sp.add_argument("--model-dirs", nargs="+", required=True)
    sp.add_argument("--metrics", nargs="+", required=True)
    sp.add_argument("--experiments-json", default="{}",
                    help='JSON {experiment: {"files": [figures, tables], "dataset", "store", "fingerprint", "description"}}')
    sp.add_argument("--no-models", action="store_true", help="do not log the checkpoints as MLflow models")

    sp = add("panels", cmd_panels, "qualitative panels of one experiment: input, truth, every model, on fixed test slices")
    for a in ("--experiment", "--experiment-spec", "--model-dir", "--store", "--split", "--png"):
        sp.add_argument(a, required=True)
    sp.add_argument("--seed", type=int, required=True, help="the seed whose predictions are shown")
    sp.add_argument("--predictions", nargs="+", required=True, metavar="MODEL=FILE")
    sp.add_argument("--n-cases", type=int, default=2, help="first N test cases, one slice each")

    sp = add("report-pages", cmd_report_pages, "HTML pages of one experiment for the Snakemake report")
    for a in ("--experiment", "--experiment-spec", "--table", "--stats", "--verdicts", "--out-dir"):
        sp.add_argument(a, required=True)
    sp.add_argument("--model-order", nargs="+", required=True)
    sp.add_argument("--model-dirs", nargs="+", required=True)
    sp.add_argument("--metrics", nargs="+", required=True)
    sp.add_argument("--paper-table", help="paper_<group>.csv of the experiment's group")
    sp.add_argument("--robustness", help="<exp>_robustness.csv")
    sp.add_argument("--runs", help="results/mlflow/runs/<exp>.json (the experiment's MLflow run ids)")

    sp = add("paper-numbers", cmd_paper_numbers, "every paper number with its verdict (CSV + HTML)")
    for a in ("--run-summary", "--paper-config", "--not-reproduced", "--csv", "--html"):
        sp.add_argument(a, required=True)
    sp.add_argument("--verdicts", nargs="*", default=[], help="<exp>_verdicts.csv of every experiment that ran")

    sp = add("overview", cmd_overview, "the report's landing page")
    for a in ("--run-summary", "--all", "--paper-numbers", "--logs-dir", "--out"):
        sp.add_argument(a, required=True)
    sp.add_argument("--config-files", nargs="*", default=[])
    sp.add_argument("--model-dirs", nargs="+", required=True)
    sp.add_argument("--fingerprints", nargs="*", default=[])
    sp.add_argument("--reproduced", help="results/tables/reproduced.csv: this run against the reference run")

    sp = add("collect", cmd_collect, "all experiments' tables -> results/tables/all.csv")
    sp.add_argument("--tables", nargs="+", required=True)
    sp.add_argument("--robustness", nargs="*", default=[], help="<exp>_robustness.csv summaries")
    sp.add_argument("--runs", required=True, nargs="+",
                    help="results/mlflow/runs/<exp>.json of every experiment (MLflow run ids)")
    sp.add_argument("--out", required=True)
    sp.add_argument("--health-md", help="health summary of every model (default: health.md beside --out)")

    sp = add("reproduced", cmd_reproduced, "every number of all.csv against a reference run, within tolerance")
    sp.add_argument("--table", required=True, help="this run's results/tables/all.csv")
    sp.add_argument("--reference", help="the reference all.csv (none: the output says no reference is named)")
    sp.add_argument("--about", help="JSON beside the reference: where and with which kernels it was made")
    sp.add_argument("--tolerances", required=True, help='JSON {metric: absolute tolerance, "default": ...}')
    sp.add_argument("--csv", required=True)
    sp.add_argument("--md", required=True)

    sp = add("reference", cmd_reference, "a finished run's all.csv -> a reference run (CSV + JSON of its machine)")
    sp.add_argument("--table", required=True, help="results/tables/all.csv of the finished run")
    sp.add_argument("--out", required=True, help="e.g. config/reference_runs/embedded_default.csv")
    return p


def process_age() -> float | None:
    """Seconds since this process started (Linux /proc; None elsewhere): interpreter start-up plus
    imports when read at the top of :func:`main` (near zero in a job forked from the fork server)."""
    import os

    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def _watch_snakemake() -> None:
    """Local jobs of a Snakemake run (``MEDKD_SNAKEMAKE_PID=host:pid``, set by the Snakefile) end when that
    Snakemake is gone, so a killed run leaves no orphan racing the next run's job. Not on other hosts
    (SLURM jobs inherit the variable) and not inside SLURM allocations."""
    import os
    import signal
    import socket
    import threading

    owner = os.environ.get("MEDKD_SNAKEMAKE_PID", "")
    host, _, pid = owner.rpartition(":")
    if not pid.isdigit() or host != socket.gethostname() or os.environ.get("SLURM_JOB_ID"):
        return

    def watch():
        while True:
            time.sleep(0.5)
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGKILL)
            except PermissionError:
                pass

    threading.Thread(target=watch, name="medkd-watch-snakemake", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    startup = process_age()
    _watch_snakemake()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)
    if startup is not None:
        logging.getLogger("medkd").info("%s: start-up %.2f s (interpreter and imports before the step)",
                                        args.command, startup)
    import os

    if os.environ.get("SLURM_JOB_ID"):  # where a cluster job ran, in its own log
        logging.getLogger("medkd").info(
            "%s: SLURM_JOB_ID=%s partition=%s cpus=%s gpus=%s CUDA_VISIBLE_DEVICES=%s threads=%s", args.command,
            os.environ["SLURM_JOB_ID"], os.environ.get("SLURM_JOB_PARTITION"), os.environ.get("SLURM_CPUS_PER_TASK"),
            os.environ.get("SLURM_GPUS", os.environ.get("SLURM_GPUS_ON_NODE")), os.environ.get("CUDA_VISIBLE_DEVICES"),
            getattr(args, "threads", None))
    t0 = time.perf_counter()
    if getattr(args, "threads", None):
        limit_threads(args.threads)
    from medkd.errors import InputError
    from medkd.integrity import with_hint
    from medkd.io import is_disk_full

    log = logging.getLogger("medkd")
    try:
        args.func(args)
    except (InputError, FileNotFoundError) as exc:  # bad input: one line naming the file/key and the problem
        log.error("%s failed: %s", args.command, with_hint(str(exc)))
        log.debug("traceback", exc_info=True)
        return 2
    except ValueError as exc:  # usually bad data; the traceback goes to the job's log in case it is a bug
        log.error("%s failed: %s", args.command, with_hint(str(exc)), exc_info=True)
        return 2
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        log.error("%s failed: no space left on device (%s); outputs are written under temporary names and "
                  "were removed. Free space and re-run the same command.", args.command, exc)
        return 2
    logging.getLogger("medkd").info("%s done in %.1f s (%s)", args.command, time.perf_counter() - t0, resource_use())
    if os.environ.get(RECORD_IMPORTS_VARIABLE):
        record_imports(args.command, os.environ[RECORD_IMPORTS_VARIABLE])
    return 0


RECORD_IMPORTS_VARIABLE = "MEDKD_RECORD_IMPORTS"
"""A directory: every successful step writes there the medkd modules it imported (tests/integration/
test_codehash_closure.py compares them with medkd.codehash's static closure)."""


def record_imports(step: str, folder: str) -> None:
    """Write ``<folder>/<step>-<pid>.json``: {"step", "argv", "modules": the imported ``medkd`` modules}."""
    import os

    path = Path(folder) / f"{step}-{os.getpid()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    modules = sorted(m for m in sys.modules if m == "medkd" or m.startswith("medkd."))
    path.write_text(json.dumps({"step": step, "argv": sys.argv[1:], "modules": modules}))


def resource_use() -> str:
    """CPU seconds and peak resident memory of this process and its waited-for children.

    CPU comes from ``getrusage``. The peak is ``VmHWM`` of ``/proc/self/status`` (Linux: the high-water mark
    of this process's own address space), not ``ru_maxrss``: Linux carries ``ru_maxrss`` over ``execve``, so a
    job started by a large parent (pytest, Snakemake) would report at least the parent's resident size, however
    little it used itself. Children count by their ``ru_maxrss``; without ``/proc`` (not Linux) this process does
    too (KiB on Linux, bytes on macOS: the figure is then an upper bound). A job forked from the fork server
    counts from its fork: its CPU starts at zero, its RSS includes the preloaded libraries it has touched.
    Snakemake's benchmark files of local runs measure the fork-server client instead (docs/benchmarks.md), so
    the log says it."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime
    return f"CPU {cpu:.1f} s, peak RSS {max(own_peak_kib(me.ru_maxrss), kids.ru_maxrss) / 1024:.0f} MiB"


def own_peak_kib(fallback: int) -> int:
    """``VmHWM`` of ``/proc/self/status`` in KiB (this process since its exec), or ``fallback`` without it."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return fallback


if __name__ == "__main__":
    sys.exit(main())
