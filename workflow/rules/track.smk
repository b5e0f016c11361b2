# track: mirrors an experiment's finished runs into the SQLite store as soon as its tables and figures
# exist (one job per experiment, so tracking overlaps the other experiments' training): a parent run per
# (experiment, model) with the mean and sd over seeds, its health flags and its KD differences with their
# intervals, a child run per seed (params, epoch and loss-term
# curves with the training's timestamps, test metrics, the model), the experiment's figures, provenance and
# source tags, the slice store as input dataset (medkd.tracking). The jobs take turns on the store: each
# holds an exclusive lock on results/mlflow.db.lock while it writes.


rule track:
    input:
        table="results/tables/{exp}.md",
        metrics=lambda w: [
            f"results/{w.exp}/metrics/{m}/seed{s}.csv" for m, s in all_runs(w.exp)
        ],
        summaries=lambda w: [
            f"{model_dir(w.exp, m, s)}/summary.json" for m, s in all_runs(w.exp)
        ],
        figures=lambda w: experiment_figures(w.exp),
        verdicts="results/tables/{exp}_verdicts.csv",
        stats="results/tables/{exp}_stats.csv",
    output:
        runs="results/mlflow/runs/{exp}.json",
    log:
        "results/logs/track/{exp}.log",
    priority: REPORT_PRIORITY
    conda:
        "../../envs/tracking.yaml"
    resources:
        mlflow_store=1,  # profiles/default allows one at a time, so no core waits on the store's lock
    params:
        medkd=MEDKD,
        code=code("track"),
        uri=CFG["mlflow"]["tracking_uri"],
        prefix=CFG["mlflow"]["experiment_prefix"],
        model_dirs=lambda w: " ".join(
            model_dir(w.exp, m, s) for m, s in all_runs(w.exp)
        ),
        experiments=lambda w: canonical_json({w.exp: track_experiments()[w.exp]}),
    shell:
        "{params.medkd} track --tracking-uri {params.uri} --prefix {params.prefix} --model-dirs {params.model_dirs}"
        " --metrics {input.metrics} --tables-dir results/tables --artifact-root results/mlflow/artifacts"
        " --experiments-json {params.experiments:q} --out {output.runs} --threads {threads} > {log} 2>&1"
