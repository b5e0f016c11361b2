# medkd: knowledge distillation for medical imaging, from raw volumes to the paper tables.
# Thin on purpose: config, validation, rule files, the default target. All logic lives in src/medkd.
from snakemake.utils import min_version, validate

# the pinned, tested Snakemake (requirements.lock); medkd.snakemake_fixes patches its scheduler
min_version("9.27.1")


# The embedded default, only when no --configfile is given: a --configfile replaces it instead of being merged
# into it. Jobs (SLURM, conda) receive the client's --configfiles, so they see exactly the client's config.
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


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
    reproduced,
    panels,
    report_pages,
    paper_numbers,
    overview,


onstart:
    start_forkserver()


onsuccess:
    stop_forkserver()


onerror:
    stop_forkserver()


# The default target: the tables and everything `make report` shows (results/report.html).
rule all:
    default_target: True
    input:
        "results/tables/all.csv",
        "results/tables/reproduced.md",
        "results/report/overview.html",
        "results/report/paper_numbers.html",
        expand("results/report/{exp}/paper.html", exp=EXPERIMENTS),
