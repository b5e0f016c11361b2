# tables: per-experiment tables and figures, paired statistics (<exp>_stats.csv), paper verdicts
# (<exp>_verdicts.csv) and health flags; panels: qualitative test slices; collect: results/tables/all.csv
# with MLflow run ids and results/tables/health.md; report_pages, paper_numbers, overview: the HTML pages of
# `make report` (results/report.html, Snakemake's --report). Report items: a category per experiment
# (subcategories Tables, Figures, Models; one label each) and Overview.


rule tables:
    input:
        metrics=lambda w: [
            f"results/{w.exp}/metrics/{m}/seed{s}.csv" for m, s in all_runs(w.exp)
        ],
        summaries=lambda w: [
            f"{model_dir(w.exp, m, s)}/summary.json" for m, s in all_runs(w.exp)
        ],
    output:
        csv="results/tables/{exp}.csv",
        md="results/tables/{exp}.md",
        tex="results/tables/{exp}.tex",
        png=report(
            "results/figures/{exp}.png",
            caption="../report/experiment.rst",
            category="{exp}",
            subcategory="Figures",
            labels={"figure": "main metric per case and seed"},
        ),
        curves=report(
            "results/figures/{exp}_curves.png",
            caption="../report/curves.rst",
            category="{exp}",
            subcategory="Figures",
            labels={"figure": "validation curves"},
        ),
        stats="results/tables/{exp}_stats.csv",
        verdicts="results/tables/{exp}_verdicts.csv",
    log:
        "results/logs/tables/{exp}.log",
    priority: REPORT_PRIORITY
    retries: NO_RETRY
    conda:
        "../../envs/tables.yaml"
    params:
        medkd=MEDKD,
        code=code("tables"),
        spec=lambda w: canonical_json(exp_table_spec(w.exp)),
        health=canonical_json(CFG["health"]),
        stats=canonical_json(CFG["stats"]),
        order=lambda w: " ".join(exp_cfg(w.exp)["models"]),
        model_dirs=lambda w: " ".join(
            model_dir(w.exp, m, s) for m, s in all_runs(w.exp)
        ),
    shell:
        "{params.medkd} tables --experiment {wildcards.exp} --experiment-spec {params.spec:q} --metrics {input.metrics}"
        " --model-order {params.order} --model-dirs {params.model_dirs} --csv {output.csv} --md {output.md} --tex {output.tex}"
        " --png {output.png} --curves {output.curves} --stats {output.stats} --health-spec {params.health:q}"
        " --stats-spec {params.stats:q} --verdicts {output.verdicts} --threads {threads} > {log} 2>&1"


rule panels:
    input:
        predictions=lambda w: [
            f"results/{w.exp}/predictions/{m}/seed{first_seed(w.exp)}.h5"
            for m in panel_models(w.exp)
        ],
        store=lambda w: store_path(w.exp),
        split="results/splits/{exp}.json",
    output:
        png=report(
            "results/figures/{exp}_panels.png",
            caption="../report/panels.rst",
            category="{exp}",
            subcategory="Figures",
            labels={"figure": "qualitative panels"},
        ),
    log:
        "results/logs/panels/{exp}.log",
    priority: REPORT_PRIORITY
    retries: NO_RETRY
    conda:
        "../../envs/training.yaml"
    params:
        medkd=MEDKD,
        code=code("panels"),
        spec=lambda w: canonical_json(exp_cfg(w.exp)),
        seed=lambda w: first_seed(w.exp),
        model_dir=lambda w: model_dir(w.exp, panel_models(w.exp)[0], first_seed(w.exp)),
        pairs=lambda w: " ".join(
            f"{m}=results/{w.exp}/predictions/{m}/seed{first_seed(w.exp)}.h5"
            for m in panel_models(w.exp)
        ),
    shell:
        "{params.medkd} panels --experiment {wildcards.exp} --experiment-spec {params.spec:q}"
        " --model-dir {params.model_dir} --store {input.store} --split {input.split} --seed {params.seed}"
        " --predictions {params.pairs} --png {output.png} > {log} 2>&1"


rule paper_table:
    input:
        tables=lambda w: [f"results/tables/{e}.csv" for e in GROUPS[w.group]],
        verdicts=lambda w: [f"results/tables/{e}_verdicts.csv" for e in GROUPS[w.group]],
    output:
        csv="results/tables/paper_{group}.csv",
        md="results/tables/paper_{group}.md",
    log:
        "results/logs/paper_table/{group}.log",
    # only the config's groups: results/tables/paper_numbers.csv is another rule's
    wildcard_constraints:
        group="|".join(GROUPS) or "none",
    priority: REPORT_PRIORITY
    retries: NO_RETRY
    conda:
        "../../envs/tables.yaml"
    params:
        medkd=MEDKD,
        code=code("paper-table"),
        spec=lambda w: canonical_json({e: exp_table_spec(e) for e in GROUPS[w.group]}),
        order=lambda w: " ".join(
            f"{e}:{','.join(exp_cfg(e)['models'])}" for e in GROUPS[w.group]
        ),
    shell:
        "{params.medkd} paper-table --group {wildcards.group} --experiments-spec {params.spec:q}"
        " --order {params.order} --tables {input.tables} --verdicts {input.verdicts} --csv {output.csv} --md {output.md}"
        " --threads {threads} > {log} 2>&1"


rule collect:
    input:
        tables=expand("results/tables/{exp}.csv", exp=EXPERIMENTS),
        paper_tables=expand("results/tables/paper_{group}.md", group=list(GROUPS)),
        robustness=[
            f"results/tables/{e}_robustness.csv"
            for e in EXPERIMENTS
            if "robustness" in exp_cfg(e)
        ],
        runs=expand("results/mlflow/runs/{exp}.json", exp=EXPERIMENTS),
    output:
        all=report(
            "results/tables/all.csv",
            caption="../report/all.rst",
            category="Overview",
            labels={"page": "all.csv: every experiment, long format"},
        ),
        health="results/tables/health.md",
    log:
        "results/logs/collect.log",
    retries: NO_RETRY
    conda:
        "../../envs/tables.yaml"
    params:
        medkd=MEDKD,
        code=code("collect"),
    shell:
        "{params.medkd} collect --tables {input.tables} --robustness {input.robustness} --runs {input.runs}"
        " --out {output.all} --health-md {output.health} --threads {threads} > {log} 2>&1"


rule robustness_table:
    input:
        scores=lambda w: [
            f"results/{w.exp}/robustness/{m}/seed{s}.csv"
            for m, s in all_runs(w.exp)
            if model_cfg(w.exp, m)["role"] != "baseline"
        ],
    output:
        csv="results/tables/{exp}_robustness.csv",
        md="results/tables/{exp}_robustness.md",
        png=report(
            "results/figures/{exp}_robustness.png",
            caption="../report/robustness.rst",
            category="{exp}",
            subcategory="Figures",
            labels={"figure": "robustness curves"},
        ),
    log:
        "results/logs/robustness_table/{exp}.log",
    retries: NO_RETRY
    conda:
        "../../envs/training.yaml"
    params:
        medkd=MEDKD,
        code=code("robustness-table"),
    shell:
        "{params.medkd} robustness-table --experiment {wildcards.exp} --inputs {input.scores}"
        " --csv {output.csv} --md {output.md} --png {output.png} --threads {threads} > {log} 2>&1"


rule report_pages:
    input:
        table="results/tables/{exp}.csv",
        stats="results/tables/{exp}_stats.csv",
        verdicts="results/tables/{exp}_verdicts.csv",
        metrics=lambda w: [
            f"results/{w.exp}/metrics/{m}/seed{s}.csv" for m, s in all_runs(w.exp)
        ],
        paper=lambda w: (
            [f"results/tables/paper_{exp_cfg(w.exp)['group']}.csv"]
            if "group" in exp_cfg(w.exp)
            else []
        ),
        robustness=lambda w: (
            [f"results/tables/{w.exp}_robustness.csv"]
            if "robustness" in exp_cfg(w.exp)
            else []
        ),
        runs="results/mlflow/runs/{exp}.json",
    output:
        table=report(
            "results/report/{exp}/table.html",
            caption="../report/table.rst",
            category="{exp}",
            subcategory="Tables",
            labels={"table": "experiment table"},
        ),
        paper=report(
            "results/report/{exp}/paper.html",
            caption="../report/paper.rst",
            category="{exp}",
            subcategory="Tables",
            labels={"table": "paper layout and verdicts"},
        ),
        models=report(
            directory("results/report/{exp}/models"),
            patterns=["{model}.html"],
            category="{exp}",
            subcategory="Models",
            caption="../report/model.rst",
            labels=lambda w: {"model": model_label(w.exp, w.model)},
        ),
    log:
        "results/logs/report_pages/{exp}.log",
    retries: NO_RETRY
    conda:
        "../../envs/tables.yaml"
    params:
        medkd=MEDKD,
        code=code("report-pages"),
        spec=lambda w: canonical_json(exp_cfg(w.exp)),
        order=lambda w: " ".join(exp_cfg(w.exp)["models"]),
        model_dirs=lambda w: " ".join(
            model_dir(w.exp, m, s) for m, s in all_runs(w.exp)
        ),
        extra=lambda w, input: " ".join(
            ([f"--paper-table {input.paper[0]}"] if input.paper else [])
            + ([f"--robustness {input.robustness[0]}"] if input.robustness else [])
        ),
    shell:
        "{params.medkd} report-pages --experiment {wildcards.exp} --experiment-spec {params.spec:q}"
        " --model-order {params.order} --table {input.table} --stats {input.stats} --verdicts {input.verdicts}"
        " --model-dirs {params.model_dirs} --metrics {input.metrics} --runs {input.runs} {params.extra}"
        " --out-dir results/report/{wildcards.exp} > {log} 2>&1"


rule paper_numbers:
    input:
        verdicts=expand("results/tables/{exp}_verdicts.csv", exp=EXPERIMENTS),
        # repository files, found from the Snakefile (the working directory may be anywhere: --directory)
        paper_config=str(REPO_DIR / "config/paper.yaml"),
        paper_experiments=sorted(
            str(p) for p in (REPO_DIR / "config/experiments").glob("*.yaml")
        ),
        not_reproduced=str(REPO_DIR / "docs/not_reproduced.md"),
    output:
        csv="results/tables/paper_numbers.csv",
        html=report(
            "results/report/paper_numbers.html",
            caption="../report/paper_numbers.rst",
            category="Overview",
            labels={"page": "paper numbers and verdicts"},
        ),
    log:
        "results/logs/paper_numbers.log",
    retries: NO_RETRY
    conda:
        "../../envs/tables.yaml"
    params:
        medkd=MEDKD,
        code=code("paper-numbers"),
        run=canonical_json(run_summary()),
    shell:
        "{params.medkd} paper-numbers --run-summary {params.run:q} --paper-config {input.paper_config}"
        " --not-reproduced {input.not_reproduced} --verdicts {input.verdicts} --csv {output.csv} --html {output.html}"
        " > {log} 2>&1"


rule overview:
    input:
        all="results/tables/all.csv",
        reproduced="results/tables/reproduced.csv",
        paper_numbers="results/tables/paper_numbers.csv",
        summaries=[
            f"{model_dir(e, m, s)}/summary.json"
            for e in EXPERIMENTS
            for m, s in all_runs(e)
        ],
        fingerprints=sorted(
            {f"results/slices/{exp_dataset(e)}.json" for e in EXPERIMENTS}
        ),
        pages=expand("results/report/{exp}/table.html", exp=EXPERIMENTS),
        panels=expand("results/figures/{exp}_panels.png", exp=EXPERIMENTS),
    output:
        html="results/report/overview.html",
    log:
        "results/logs/overview.log",
    retries: NO_RETRY
    conda:
        "../../envs/tables.yaml"
    params:
        medkd=MEDKD,
        code=code("overview"),
        run=canonical_json(run_summary()),
        configfiles=" ".join(
            os.path.relpath(str(f))
            for f in (
                getattr(workflow, "overwrite_configfiles", None)
                or workflow.configfiles
            )
        ),
        model_dirs=" ".join(
            model_dir(e, m, s) for e in EXPERIMENTS for m, s in all_runs(e)
        ),
    shell:
        "{params.medkd} overview --run-summary {params.run:q} --config-files {params.configfiles}"
        " --all {input.all} --paper-numbers {input.paper_numbers} --model-dirs {params.model_dirs}"
        " --fingerprints {input.fingerprints} --reproduced {input.reproduced} --logs-dir results/logs"
        " --out {output.html} > {log} 2>&1"


rule reproduced:
    input:
        all="results/tables/all.csv",
        reference=reference_run_inputs(),
    output:
        csv="results/tables/reproduced.csv",
        md=report(
            "results/tables/reproduced.md",
            caption="../report/reproduced.rst",
            category="Overview",
            labels={"page": "reproduced.md: this run against the reference run"},
        ),
    log:
        "results/logs/reproduced.log",
    retries: NO_RETRY
    conda:
        "../../envs/tables.yaml"
    params:
        medkd=MEDKD,
        code=code("reproduced"),
        args=reference_run_args(),
    shell:
        "{params.medkd} reproduced --table {input.all} {params.args} --csv {output.csv} --md {output.md}"
        " > {log} 2>&1"
