# tables: per-experiment tables and figures, paired statistics (<exp>_stats.csv) and health flags;
# collect: results/tables/all.csv with MLflow run ids and results/tables/health.md.


rule tables:
    input:
        metrics=lambda w: [f"results/{w.exp}/metrics/{m}/seed{s}.csv" for m, s in all_runs(w.exp)],
        summaries=lambda w: [f"{model_dir(w.exp, m, s)}/summary.json" for m, s in all_runs(w.exp)],
    output:
        csv="results/tables/{exp}.csv",
        md="results/tables/{exp}.md",
        tex="results/tables/{exp}.tex",
        png=report("results/figures/{exp}.png", caption="../report/experiment.rst", category="Results"),
        curves=report("results/figures/{exp}_curves.png", caption="../report/curves.rst", category="Training"),
        stats="results/tables/{exp}_stats.csv",
    params:
        code=code("tables"),
        spec=lambda w: canonical_json(exp_table_spec(w.exp)),
        health=canonical_json(CFG["health"]),
        stats=canonical_json(CFG["stats"]),
        order=lambda w: " ".join(exp_cfg(w.exp)["models"]),
        model_dirs=lambda w: " ".join(model_dir(w.exp, m, s) for m, s in all_runs(w.exp)),
    log:
        "results/logs/tables/{exp}.log",
    conda:
        "../../envs/tables.yaml"
    shell:
        "workflow/scripts/medkd tables --experiment {wildcards.exp} --experiment-spec {params.spec:q} --metrics {input.metrics}"
        " --model-order {params.order} --model-dirs {params.model_dirs} --csv {output.csv} --md {output.md} --tex {output.tex}"
        " --png {output.png} --curves {output.curves} --stats {output.stats} --health-spec {params.health:q}"
        " --stats-spec {params.stats:q} --threads {threads} > {log} 2>&1"


rule paper_table:
    input:
        tables=lambda w: [f"results/tables/{e}.csv" for e in GROUPS[w.group]],
    output:
        csv="results/tables/paper_{group}.csv",
        md="results/tables/paper_{group}.md",
    params:
        code=code("paper-table"),
        spec=lambda w: canonical_json({e: exp_table_spec(e) for e in GROUPS[w.group]}),
        order=lambda w: " ".join(f"{e}:{','.join(exp_cfg(e)['models'])}" for e in GROUPS[w.group]),
    log:
        "results/logs/paper_table/{group}.log",
    conda:
        "../../envs/tables.yaml"
    shell:
        "workflow/scripts/medkd paper-table --group {wildcards.group} --experiments-spec {params.spec:q}"
        " --order {params.order} --tables {input.tables} --csv {output.csv} --md {output.md} --threads {threads} > {log} 2>&1"


rule collect:
    input:
        tables=expand("results/tables/{exp}.csv", exp=EXPERIMENTS),
        paper_tables=expand("results/tables/paper_{group}.md", group=list(GROUPS)),
        robustness=[f"results/tables/{e}_robustness.csv" for e in EXPERIMENTS if "robustness" in exp_cfg(e)],
        runs="results/mlflow/runs.json",
    output:
        all=report("results/tables/all.csv", caption="../report/all.rst", category="Results"),
        health="results/tables/health.md",
    params:
        code=code("collect"),
    log:
        "results/logs/collect.log",
    conda:
        "../../envs/tables.yaml"
    shell:
        "workflow/scripts/medkd collect --tables {input.tables} --robustness {input.robustness} --runs {input.runs}"
        " --out {output.all} --health-md {output.health} --threads {threads} > {log} 2>&1"


rule robustness_table:
    input:
        scores=lambda w: [f"results/{w.exp}/robustness/{m}/seed{s}.csv" for m, s in all_runs(w.exp)
                          if model_cfg(w.exp, m)["role"] != "baseline"],
    output:
        csv="results/tables/{exp}_robustness.csv",
        md="results/tables/{exp}_robustness.md",
        png=report("results/figures/{exp}_robustness.png", caption="../report/robustness.rst", category="Robustness"),
    params:
        code=code("robustness-table"),
    log:
        "results/logs/robustness_table/{exp}.log",
    conda:
        "../../envs/training.yaml"
    shell:
        "workflow/scripts/medkd robustness-table --experiment {wildcards.exp} --inputs {input.scores}"
        " --csv {output.csv} --md {output.md} --png {output.png} --threads {threads} > {log} 2>&1"
