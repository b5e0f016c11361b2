# track: the single MLflow writer. Mirrors every finished run into an SQLite store after the tables and
# figures exist: a parent run per (experiment, model) with the mean and sd over seeds, a child run per seed
# (params, epoch and loss-term curves with the training's timestamps, test metrics, the model), the
# experiment's figures, provenance and source tags, the slice store as input dataset (medkd.tracking).


rule track:
    input:
        tables=expand("results/tables/{exp}.md", exp=EXPERIMENTS),
        metrics=[f"results/{e}/metrics/{m}/seed{s}.csv" for e in EXPERIMENTS for m, s in all_runs(e)],
        summaries=[f"{model_dir(e, m, s)}/summary.json" for e in EXPERIMENTS for m, s in all_runs(e)],
        figures=[f for e in EXPERIMENTS for f in experiment_figures(e)],
        verdicts=expand("results/tables/{exp}_verdicts.csv", exp=EXPERIMENTS),
    output:
        runs="results/mlflow/runs.json",
    params:
        code=code("track"),
        uri=CFG["mlflow"]["tracking_uri"],
        prefix=CFG["mlflow"]["experiment_prefix"],
        model_dirs=" ".join(model_dir(e, m, s) for e in EXPERIMENTS for m, s in all_runs(e)),
        experiments=canonical_json(track_experiments()),
    log:
        "results/logs/track.log",
    conda:
        "../../envs/tracking.yaml"
    shell:
        "workflow/scripts/medkd track --tracking-uri {params.uri} --prefix {params.prefix} --model-dirs {params.model_dirs}"
        " --metrics {input.metrics} --tables-dir results/tables --artifact-root results/mlflow/artifacts"
        " --experiments-json {params.experiments:q} --out {output.runs} --threads {threads} > {log} 2>&1"
