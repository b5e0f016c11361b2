# train: one job per (experiment, model, seed), for teachers and students alike.
# A killed job resumes from results/.../last.pt when re-run (profiles/default sets --rerun-incomplete).


rule train:
    input:
        unpack(train_inputs),
    output:
        model="results/{exp}/models/{model}/seed{seed}/model.pt",
        summary="results/{exp}/models/{model}/seed{seed}/summary.json",
    log:
        "results/logs/train/{exp}/{model}/seed{seed}.log",
    benchmark:
        "results/benchmarks/train/{exp}/{model}/seed{seed}.tsv"
    conda:
        "../../envs/training.yaml"
    threads: NET_THREADS
    resources:
        **job_resources("train"),
    params:
        medkd=MEDKD,
        run=RUN_FLAGS,
        code=model_code("train"),
        spec=spec_json,
        extra=train_extra_args,
        out=lambda w: model_dir(w.exp, w.model, w.seed),
    shell:
        "{params.medkd} train --spec {params.spec:q} --seed {wildcards.seed} --store {input.store}"
        " --split {input.split} --fingerprint {input.fingerprint} {params.extra} --out {params.out}"
        " {params.run} --threads {threads} > {log} 2>&1"
