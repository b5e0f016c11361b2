# tables: per-experiment tables and figures; collect: results/tables/all.csv with MLflow run ids.


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
    params:
        spec=lambda w: canonical_json(exp_cfg(w.exp)),
        model_dirs=lambda w: " ".join(model_dir(w.exp, m, s) for m, s in all_runs(w.exp)),
    log:
        "results/logs/tables/{exp}.log",
    conda:
        "../../envs/medkd.yaml"
    shell:
        "workflow/scripts/medkd tables --experiment {wildcards.exp} --experiment-spec {params.spec:q} --metrics {input.metrics}"
        " --model-dirs {params.model_dirs} --csv {output.csv} --md {output.md} --tex {output.tex}"
        " --png {output.png} --curves {output.curves} > {log} 2>&1"


rule collect:
    input:
        tables=expand("results/tables/{exp}.csv", exp=EXPERIMENTS),
        runs="results/mlflow/runs.json",
    output:
        all=report("results/tables/all.csv", caption="../report/all.rst", category="Results"),
    log:
        "results/logs/collect.log",
    conda:
        "../../envs/medkd.yaml"
    shell:
        "workflow/scripts/medkd collect --tables {input.tables} --runs {input.runs} --out {output.all} > {log} 2>&1"
