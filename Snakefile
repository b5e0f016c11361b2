# medkd: knowledge distillation for medical imaging, from raw volumes to the paper tables.
# Thin on purpose: config, validation, rule files, the default target. All logic lives in src/medkd.
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


# medkd validates first (common.smk): one line naming the key, before Snakemake's own schema check.
include: "workflow/rules/common.smk"


validate(config, "workflow/schemas/config.schema.yaml")
wildcard_constraints:
    exp="|".join(EXPERIMENTS) or "none",
    model=r"[A-Za-z0-9_]+",
    seed=r"\d+",
    dataset=r"[A-Za-z0-9_]+",


include: "workflow/rules/data.smk"
include: "workflow/rules/kspace.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/track.smk"


localrules:
    all,
    fetch,
    split,
    tables,
    paper_table,
    robustness_table,
    track,
    collect,


clear_stale_lock()


onstart:
    start_forkserver()


onsuccess:
    stop_forkserver()
    release_owner()


onerror:
    stop_forkserver()
    release_owner()


rule all:
    input:
        "results/tables/all.csv",
    default_target: True
