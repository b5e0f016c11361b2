# track: the single MLflow writer. Mirrors every finished run (params, epoch curves, test metrics,
# provenance tags, artifacts) into an SQLite store after the tables exist.


rule track:
    input:
        tables=expand("results/tables/{exp}.md", exp=EXPERIMENTS),
        metrics=[f"results/{e}/metrics/{m}/seed{s}.csv" for e in EXPERIMENTS for m, s in all_runs(e)],
        summaries=[f"{model_dir(e, m, s)}/summary.json" for e in EXPERIMENTS for m, s in all_runs(e)],
    output:
        runs="results/mlflow/runs.json",
    params:
        code=code("track"),
        uri=CFG["mlflow"]["tracking_uri"],
        prefix=CFG["mlflow"]["experiment_prefix"],
        model_dirs=" ".join(model_dir(e, m, s) for e in EXPERIMENTS for m, s in all_runs(e)),
    log:
        "results/logs/track.log",
    conda:
        "../../envs/tables.yaml"
    shell:
        "workflow/scripts/medkd track --tracking-uri {params.uri} --prefix {params.prefix} --model-dirs {params.model_dirs}"
        " --metrics {input.metrics} --tables-dir results/tables --artifact-root results/mlflow/artifacts"
        " --out {output.runs} --threads {threads} > {log} 2>&1"
