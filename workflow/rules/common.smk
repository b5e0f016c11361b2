# Helpers shared by every stage file: the validated config, path builders, job parameters.
import json
import os
import shlex
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from functools import lru_cache  # noqa: E402

from medkd import plan as _plan  # noqa: E402
from medkd import resources as _resources  # noqa: E402
from medkd.codehash import code_hash  # noqa: E402
from medkd.config import (  # noqa: E402
    ConfigError,
    cache_splits,
    canonical_json,
    config_digest,
    experiment_seeds,
    load_config,
    model_spec as _model_spec,
)
from medkd.spec import spec_hash  # noqa: E402
from medkd import snakemake_fixes  # noqa: E402

# Report jobs (tables, panels, paper tables, MLflow track) run as soon as their inputs exist, ahead of waiting
# training jobs: they are short, so the run ends on the last model's chain, not on a queue of them.
REPORT_PRIORITY = 10

# One pending scheduler re-evaluation timer instead of one more per finished job (a Snakemake bug that left
# ~185 timers, each waking the scheduler loop once a second, late in the embedded default;
# src/medkd/snakemake_fixes.py). In the client only; a warning names the upstream issue when it cannot apply.
snakemake_fixes.apply(workflow.is_main_process)

try:
    CFG = load_config(config)
# a bad config stops planning with one line naming the key, before any job
except ConfigError as _exc:
    print(f"medkd: invalid config: {_exc}", file=sys.stderr)
    sys.exit(1)
CFG_ID = id(CFG)  # model_spec's cache key: one validated config per Snakemake run
DATA_ROOT = CFG["data_root"]
CONFIG_DIGEST = config_digest(CFG)
# set by the client, read by the jobs it submits
CONFIG_DIGEST_VARIABLE = "MEDKD_CONFIG_DIGEST"


class RunFlags:
    """The run-settings flags (medkd.runtime.RunSettings) of the commands of the rules that run a network, as the
    param `run`. It is an object Snakemake cannot serialise, and Snakemake leaves such params out of the values it
    compares to decide a re-run: changing a run setting (CPU -> GPU, channels_last, ...) re-runs no job, while
    every other param still does. `threads` is Snakemake's own `threads:` of those rules ({threads} in the
    command; --cpus-per-task on SLURM), which Snakemake never compares either."""

    def __init__(self, cfg):
        flags = [f"--device {cfg['device']}"]
        # "auto" (the default) passes nothing
        if isinstance(cfg["channels_last"], bool):
            flags.append(
                "--channels-last" if cfg["channels_last"] else "--no-channels-last"
            )
        flags += [
            flag
            for key, flag in (
                ("cudnn_benchmark", "--cudnn-benchmark"),
                ("deterministic", "--deterministic"),
            )
            if cfg[key]
        ]
        flags.append(f"--data-memory-mb {cfg['data_memory_mb']}")
        self.text = " ".join(flags)

    def __str__(self):
        return self.text

    def __repr__(self):
        return f"RunFlags({self.text!r})"


RUN_FLAGS = RunFlags(CFG)


class DataFlags(RunFlags):
    """Param `data` of the evaluate rule: its one run setting, the data memory budget (not compared either)."""

    def __init__(self, cfg):
        self.text = f"--data-memory-mb {cfg['data_memory_mb']}"


DATA_FLAGS = DataFlags(CFG)
NET_THREADS = CFG["threads"]


class Wrapper:
    """Param `medkd` of every rule: the absolute path of workflow/scripts/medkd, found from the Snakefile
    (workflow.basedir), so the jobs run with any working directory (`snakemake -s <repo>/Snakefile
    --directory /scratch/run1`). An object, like RunFlags, so that moving the repository re-runs nothing.
    """

    def __init__(self, basedir):
        self.text = shlex.quote(str(Path(basedir) / "workflow" / "scripts" / "medkd"))

    def __str__(self):
        return self.text

    def __repr__(self):
        return f"Wrapper({self.text!r})"


MEDKD = Wrapper(workflow.basedir)
# the repository: config/, docs/ (the working directory may be elsewhere)
REPO_DIR = Path(workflow.basedir)


def _check_job_config():
    """A job Snakemake spawns elsewhere (SLURM) re-reads the config: it must be the client's. The client puts
    its digest in the environment (sbatch --export=ALL carries it into the job); a job that computes another
    one stops before running anything. Client and jobs log the digest so the two can be compared.
    """
    import os

    from snakemake.exceptions import WorkflowError
    from snakemake.logging import logger

    if workflow.remote_exec:
        expected = os.environ.get(CONFIG_DIGEST_VARIABLE)
        if expected and expected != CONFIG_DIGEST:
            raise WorkflowError(
                f"medkd: this job sees config {CONFIG_DIGEST}, the Snakemake client that submitted it used {expected}: "
                "the job was not given the client's config files (--configfiles)"
            )
        logger.info(f"medkd config {CONFIG_DIGEST} (job)")
    else:  # the client (which executor runs the jobs is not known yet while the Snakefile is read)
        os.environ[CONFIG_DIGEST_VARIABLE] = CONFIG_DIGEST
        logger.info(
            f"medkd config {CONFIG_DIGEST} (client, {len(CFG['experiments'])} experiments)"
        )


_check_job_config()


NO_CONDA_MESSAGE = (
    "medkd: --sdm conda (or --use-conda) was given, but there is no `conda` on PATH, so Snakemake cannot create "
    "the rules' environments (envs/training.yaml, envs/tables.yaml). Either install conda (e.g. Miniforge) and run "
    "again, or leave out --sdm conda and use the project's pinned virtualenv instead: `make reproduce` creates .venv "
    "from requirements.lock and runs the whole workflow (or `make venv`, then .venv/bin/snakemake ...)."
)


def _require_conda():
    """With conda deployment asked for, stop while the Snakefile is read (before any job, also for a dry run)
    when conda is missing."""
    import shutil

    from snakemake.exceptions import WorkflowError
    from snakemake_interface_executor_plugins.settings import DeploymentMethod

    settings = workflow.deployment_settings
    if (
        settings is None
        or DeploymentMethod.CONDA not in settings.deployment_method
        or shutil.which("conda")
    ):
        return
    raise WorkflowError(NO_CONDA_MESSAGE)


_require_conda()


EXPERIMENTS = list(CFG["experiments"])
GROUPS = {}  # paper table name -> its experiments, in config order
for _name, _exp in CFG["experiments"].items():
    if "group" in _exp:
        GROUPS.setdefault(_exp["group"], []).append(_name)


def exp_cfg(exp):
    return CFG["experiments"][exp]


def exp_table_spec(exp):
    """The experiment's entry as the table rules receive it: without `resources` (cluster sizes are run
    settings; changing them re-runs nothing); with the config's `rehearsal` in a rehearsal (the tables then
    say so and give no verdict)."""
    out = {k: v for k, v in exp_cfg(exp).items() if k != "resources"}
    if CFG.get("rehearsal"):
        out["rehearsal"] = CFG["rehearsal"]
    return out


def exp_dataset(exp):
    return exp_cfg(exp)["dataset"]


def model_cfg(exp, model):
    return exp_cfg(exp)["models"][model]


def model_dir(exp, model, seed):
    return f"results/{exp}/models/{model}/seed{seed}"


def store_path(exp):
    """The data a model of ``exp`` reads: the slice store (segmentation) or the k-space store."""
    e = exp_cfg(exp)
    if e["task"] == "segmentation":
        return f"results/slices/{e['dataset']}.h5"
    return f"results/kspace/{e['dataset']}/{e['kspace']['name']}.h5"


@lru_cache(maxsize=None)
def model_spec(cfg_id, exp, model):
    """The typed spec of one model (cached: the Snakefile asks for it once per job and param)."""
    return _model_spec(CFG, exp, model)


def code(step):
    """Param ``code``: hash of the source files ``medkd <step>`` runs (medkd.codehash); editing them
    re-runs the rule's jobs."""
    return code_hash(step)


def model_code(step):
    """Param ``code`` of a per-model rule: the step's files plus the model's architecture module and,
    for training, its loss modules and the architectures of teachers it runs online."""

    def params(wildcards):
        spec = model_spec(CFG_ID, wildcards.exp, wildcards.model)
        archs = [spec.arch]
        losses = []
        if step == "train":
            archs += [
                model_spec(CFG_ID, wildcards.exp, t).arch
                for t in spec.online_teachers()
            ]
            losses = [t.loss for t in spec.losses]
        return code_hash(step, model=archs, loss=losses)

    return params


def spec_json(wildcards):
    return model_spec(CFG_ID, wildcards.exp, wildcards.model).to_json()


def all_runs(exp):
    """(model, seed) of every model of ``exp``."""
    return [(m, s) for m in exp_cfg(exp)["models"] for s in experiment_seeds(CFG, exp)]


def train_inputs(wildcards):
    m = model_cfg(wildcards.exp, wildcards.model)
    spec = model_spec(CFG_ID, wildcards.exp, wildcards.model)
    exp, seed = wildcards.exp, wildcards.seed
    inputs = {
        "store": store_path(exp),
        "split": f"results/splits/{exp}.json",
        "fingerprint": f"results/slices/{exp_dataset(exp)}.json",
    }
    for t in spec.cached_teachers():
        inputs[f"cache_{t}"] = f"results/{exp}/cache/{t}/seed{seed}.h5"
    for t in m["teachers"]:
        inputs[f"teacher_{t}"] = f"{model_dir(exp, t, seed)}/summary.json"
    if m.get("init_from"):
        inputs["init"] = f"{model_dir(exp, m['init_from'], seed)}/summary.json"
    return inputs


def train_extra_args(wildcards):
    m = model_cfg(wildcards.exp, wildcards.model)
    spec = model_spec(CFG_ID, wildcards.exp, wildcards.model)
    exp, seed = wildcards.exp, wildcards.seed
    args = [
        f"--cache {t}=results/{exp}/cache/{t}/seed{seed}.h5"
        for t in spec.cached_teachers()
    ]
    args += [
        f"--teacher-dir {t}={model_dir(exp, t, seed)}" for t in spec.online_teachers()
    ]
    args += [
        f"--teacher-summary {t}={model_dir(exp, t, seed)}/summary.json"
        for t in m["teachers"]
    ]
    if m.get("init_from"):
        args.append(f"--init-dir {model_dir(exp, m['init_from'], seed)}")
    return " ".join(args)


def _local_run():
    """True when the local executor runs the jobs. Snakemake chooses the executor after it has read the
    Snakefile (workflow.executor_plugin is None while these lines run), so this is asked in resource
    functions, which Snakemake calls when it creates the jobs of the run."""
    return getattr(workflow.executor_plugin, "name", None) == "local"


def _local_gpus():
    """GPUs of this machine for a run of the local executor (none: device auto trains on the CPU and asks for
    no GPU, so the profile's gpu=1 limit does not run the network jobs one at a time); None otherwise: jobs
    that go to a cluster, whose nodes are not this machine, and dry runs, which show what a cluster would be
    asked for."""
    return _resources.visible_gpus() if _local_run() else None


def _measured_sizes():
    """The rehearsal's measurements (config `sizing.measured`, relative to the repository); none when unset or
    not there yet (every job then sized by medkd.resources' default formulas)."""
    path = CFG["sizing"].get("measured")
    if not path or not (REPO_DIR / path).is_file():
        return {}
    return _resources.read_measured(REPO_DIR / path)


def _site_partitions():
    """The site's partitions (config `partition_file`, which a site profile states in its `config:`, else the
    SLURM plugin's SNAKEMAKE_SLURM_PARTITIONS): requests are bounded by them. Read (and checked) while the
    Snakefile is read; a run of the local executor does not apply them (this machine is not a partition: see
    job_resources)."""
    path = CFG.get("partition_file") or os.environ.get("SNAKEMAKE_SLURM_PARTITIONS")
    if not path:
        return None
    from medkd import partitions as _partition_file

    try:
        # relative to the repository, like every path of the config
        return _partition_file.read(REPO_DIR / path)
    except (OSError, ValueError) as exc:
        print(f"medkd: partition file: {exc}", file=sys.stderr)
        sys.exit(1)


MEASURED = _measured_sizes()
# The rules that check or summarise data on the submit host (fetch, split, the tables and report pages) are never
# retried, whatever --retries says: they have no time or memory limit a resubmission could lift, so a failure
# there is a bad input or a bug, and retrying only prints the same error again. Jobs sent to the cluster keep
# the profile's retries (Snakemake cannot retry on some failures and not others: snakemake/snakemake#2441).
NO_RETRY = 0
# how often one job is submitted: 1 + the `retries` of medkd's SLURM workflow profile (profiles/slurm); a training
# job that hits its time limit resumes from last.pt on the next submission
SUBMISSIONS = _plan.workflow_submissions(
    REPO_DIR / "profiles" / "slurm" / "profile.yaml"
)
PARTITIONS = _site_partitions()


@lru_cache(maxsize=None)
def _dataset_specs():
    from medkd.data.sources.spec import load_datasets_yaml

    return load_datasets_yaml(REPO_DIR / "config" / "datasets.yaml")


def _dataset_size(dataset):
    """(cases, slices) of a dataset: its fingerprint once converted, else the estimate medkd plan prints."""
    from medkd.plan import dataset_size

    s = dataset_size(CFG, dataset, Path("results"), _dataset_specs())
    return (s.cases, s.slices)


def job_resources(rule_name):
    """Snakemake resources of a rule's jobs, sized by medkd.resources.size: runtime and mem_mb from the
    config's `resources`, else the rehearsal's measurement, else the default formulas; mem_mb grows with the
    attempt, runtime does not; both bounded by the site's partitions (a job that fits none stops planning with
    a message naming it); gpu for the rules that run a network unless the device is cpu.
    """

    def fingerprint(wildcards, input):
        if rule_name == "train":
            return _resources.read_fingerprint(input.fingerprint, input.fingerprint)
        if rule_name in ("cache", "infer", "evaluate", "robustness"):
            return _resources.read_fingerprint(
                f"results/slices/{exp_dataset(wildcards.exp)}.json", input.store
            )
        return None

    def size(wildcards, input, attempt, threads, need_memory=True):
        exp, model = wildcards.get("exp"), wildcards.get("model")
        dataset = wildcards.get("dataset")
        fp = None
        if exp and _resources.needs_fingerprint(
            CFG, rule_name, exp, model, MEASURED, dataset
        ):
            try:
                fp = fingerprint(wildcards, input)
            except FileNotFoundError:
                # mem_mb: <TBD> until the store is made; runtime does not wait for it (it is bounded with the
                # memory known so far, the base; mem_mb is checked against the partitions once known)
                if need_memory:
                    raise
        return _resources.size(
            CFG,
            rule_name,
            exp,
            model,
            attempt,
            fingerprint=fp,
            measured=MEASURED,
            partitions=None if _local_run() else PARTITIONS,
            dataset_size=(
                _dataset_size(exp_dataset(exp))
                if exp and rule_name == "train"
                else None
            ),
            threads=threads,
            dataset=dataset,
            job=f"{rule_name} " + ", ".join(f"{k}={v}" for k, v in wildcards.items()),
            submissions=SUBMISSIONS,
        )

    def mem_mb(wildcards, input, attempt, threads):
        return size(wildcards, input, attempt, threads).mem_mb

    def runtime(wildcards, input, attempt, threads):
        return size(wildcards, input, attempt, threads, need_memory=False).runtime

    def gpu(wildcards):
        return _resources.gpu(CFG, rule_name, _local_gpus())

    out = {"mem_mb": mem_mb, "runtime": runtime}
    if rule_name in _resources.NETWORK_RULES:
        out["gpu"] = gpu
    return out


def first_seed(exp):
    return experiment_seeds(CFG, exp)[0]


def panel_models(exp):
    """Models drawn in the qualitative panels: teachers and students (baselines are the input column)."""
    return [
        m
        for m, c in exp_cfg(exp)["models"].items()
        if c["role"] in ("teacher", "student")
    ]


def experiment_figures(exp):
    """Figures of an experiment (report, MLflow parent runs): main-metric dot plot, curves, panels, robustness."""
    figs = [
        f"results/figures/{exp}.png",
        f"results/figures/{exp}_curves.png",
        f"results/figures/{exp}_panels.png",
    ]
    if "robustness" in exp_cfg(exp):
        figs.append(f"results/figures/{exp}_robustness.png")
    return figs


def model_label(exp, model):
    """Report label of a model card: ``student_kd: KD student (hinton)``."""
    c = model_cfg(exp, model)
    if c["role"] in ("teacher", "baseline"):
        kind = c["role"]
    elif c.get("kd_method") and c["kd_method"] != "none":
        kind = f"KD student ({c['kd_method']})"
    else:
        kind = "student alone"
    return f"{model}: {kind}"


def run_summary():
    """What the landing page and the paper-numbers page need of the config (small enough for a param)."""
    return {
        "description": CFG.get("description", ""),
        "seeds": CFG.get("seeds", []),
        "device": CFG.get("device", ""),
        "config_hash": spec_hash(CFG),
        "rehearsal": CFG.get("rehearsal"),
        "experiments": {
            e: {
                "paper": c.get("paper", ""),
                "dataset": c["dataset"],
                "task": c["task"],
                "models": list(c["models"]),
                "setting": c.get("setting", e),
                "group": c.get("group", ""),
            }
            for e, c in CFG["experiments"].items()
        },
    }


def track_experiments():
    """Per experiment: the files the MLflow parent runs carry, and the slice store registered as input."""
    out = {}
    for e, c in CFG["experiments"].items():
        out[e] = {
            "files": experiment_figures(e)
            + [
                f"results/tables/{e}.md",
                f"results/tables/{e}.csv",
                f"results/tables/{e}_verdicts.csv",
                f"results/tables/{e}_stats.csv",
            ],
            # the parent runs' health flags and KD differences
            "table_csv": f"results/tables/{e}.csv",
            "stats_csv": f"results/tables/{e}_stats.csv",
            "dataset": c["dataset"],
            "store": f"results/slices/{c['dataset']}.h5",
            "fingerprint": f"results/slices/{c['dataset']}.json",
            "description": c.get("description", ""),
        }
    return out


def kspace_spec(dataset, name):
    """The mask spec named ``name`` for ``dataset`` (experiments sharing a name must agree on it)."""
    specs = {
        canonical_json(e["kspace"]["spec"])
        for e in CFG["experiments"].values()
        if e["dataset"] == dataset and e.get("kspace", {}).get("name") == name
    }
    if len(specs) != 1:
        raise ValueError(
            f"k-space {name!r} of dataset {dataset!r}: {len(specs)} different specs in the config"
        )
    return {**json.loads(specs.pop()), "name": name}


# ------------------------------------------------------------------------------ fork server (local runs)
_FORKSERVER = {}


def start_forkserver():
    """Start medkd's fork server for this run (medkd.forkserver.start_for_run): jobs fork from a process
    that imported torch once. Local runs of the client only; MEDKD_FORKSERVER=off disables it.
    """
    from medkd import forkserver

    if workflow.local_exec and workflow.is_main_process and not workflow.dryrun:
        _FORKSERVER["server"] = forkserver.start_for_run(
            str(Path(workflow.basedir) / "workflow/scripts/medkd"),
            Path("results/logs/forkserver.log"),
        )


def stop_forkserver():
    from medkd import forkserver

    forkserver.stop(_FORKSERVER.pop("server", None))


def reference_run_inputs():
    """The reference all.csv (and its JSON) the config names under ``reference_run``, as inputs of rule
    reproduced; none when the config names no reference."""
    ref = CFG.get("reference_run")
    return [ref["table"], *([ref["about"]] if ref.get("about") else [])] if ref else []


def reference_run_args():
    """``medkd reproduced`` arguments: the reference, its JSON and the tolerances (medkd.reproduced's defaults
    updated by the config's ``reference_run.tolerance``)."""
    from medkd.reproduced import DEFAULT_TOLERANCES

    ref = CFG.get("reference_run") or {}
    tolerances = {**DEFAULT_TOLERANCES, **ref.get("tolerance", {})}
    args = [f"--tolerances {shlex.quote(canonical_json(tolerances))}"]
    if ref:
        args.append(f"--reference {shlex.quote(ref['table'])}")
        if ref.get("about"):
            args.append(f"--about {shlex.quote(ref['about'])}")
    return " ".join(args)
