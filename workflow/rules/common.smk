# Helpers shared by every stage file: the validated config, path builders, job parameters.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from medkd.config import (  # noqa: E402
    canonical_json,
    cached_teachers,
    experiment_seeds,
    load_config,
    model_spec,
    online_teachers,
)

CFG = load_config(config)
DATA_ROOT = CFG["data_root"]


EXPERIMENTS = list(CFG["experiments"])


def exp_cfg(exp):
    return CFG["experiments"][exp]


def exp_dataset(exp):
    return exp_cfg(exp)["dataset"]


def model_cfg(exp, model):
    return exp_cfg(exp)["models"][model]


def model_dir(exp, model, seed):
    return f"results/{exp}/models/{model}/seed{seed}"


def store_path(exp):
    """The data a model of ``exp`` reads: the slice store (segmentation)."""
    return f"results/slices/{exp_dataset(exp)}.h5"


def spec_json(wildcards):
    return canonical_json(model_spec(CFG, wildcards.exp, wildcards.model))


def all_runs(exp):
    """(model, seed) of every model of ``exp``."""
    return [(m, s) for m in exp_cfg(exp)["models"] for s in experiment_seeds(CFG, exp)]


def train_inputs(wildcards):
    m = model_cfg(wildcards.exp, wildcards.model)
    exp, seed = wildcards.exp, wildcards.seed
    inputs = {
        "store": store_path(exp),
        "split": f"results/splits/{exp}.json",
        "fingerprint": f"results/slices/{exp_dataset(exp)}.json",
    }
    for t in cached_teachers(m):
        inputs[f"cache_{t}"] = f"results/{exp}/cache/{t}/seed{seed}.h5"
    for t in online_teachers(m):
        inputs[f"teacher_{t}"] = f"{model_dir(exp, t, seed)}/summary.json"
    if m.get("init_from"):
        inputs["init"] = f"{model_dir(exp, m['init_from'], seed)}/summary.json"
    return inputs


def train_extra_args(wildcards):
    m = model_cfg(wildcards.exp, wildcards.model)
    exp, seed = wildcards.exp, wildcards.seed
    args = [f"--cache {t}=results/{exp}/cache/{t}/seed{seed}.h5" for t in cached_teachers(m)]
    args += [f"--teacher-dir {t}={model_dir(exp, t, seed)}" for t in online_teachers(m)]
    if m.get("init_from"):
        args.append(f"--init-dir {model_dir(exp, m['init_from'], seed)}")
    return " ".join(args)
