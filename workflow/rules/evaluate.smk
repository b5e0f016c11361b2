# infer -> evaluate: test-split predictions, then per-case metrics.


rule infer:
    input:
        summary="results/{exp}/models/{model}/seed{seed}/summary.json",
        store=lambda w: store_path(w.exp),
        split="results/splits/{exp}.json",
    output:
        predictions="results/{exp}/predictions/{model}/seed{seed}.h5",
    log:
        "results/logs/infer/{exp}/{model}/seed{seed}.log",
    conda:
        "../../envs/training.yaml"
    threads: NET_THREADS
    resources:
        **job_resources("infer"),
    params:
        medkd=MEDKD,
        run=RUN_FLAGS,
        code=model_code("infer"),
        model_dir=lambda w: model_dir(w.exp, w.model, w.seed),
    shell:
        "{params.medkd} infer --model-dir {params.model_dir} --store {input.store} --split {input.split}"
        " --out {output.predictions} {params.run} --threads {threads} > {log} 2>&1"


rule evaluate:
    input:
        predictions="results/{exp}/predictions/{model}/seed{seed}.h5",
        store=lambda w: store_path(w.exp),
        split="results/splits/{exp}.json",
    output:
        metrics="results/{exp}/metrics/{model}/seed{seed}.csv",
    log:
        "results/logs/evaluate/{exp}/{model}/seed{seed}.log",
    conda:
        "../../envs/training.yaml"
    resources:
        **job_resources("evaluate"),
    params:
        medkd=MEDKD,
        code=code("evaluate"),
        model_dir=lambda w: model_dir(w.exp, w.model, w.seed),
        conventions=lambda w: " ".join(exp_cfg(w.exp)["conventions"]),
        threshold=lambda w: exp_cfg(w.exp)["logit_threshold"],
        regions=lambda w: canonical_json(exp_cfg(w.exp).get("regions", {})),
        data=DATA_FLAGS,
    shell:
        "{params.medkd} evaluate --predictions {input.predictions} --model-dir {params.model_dir} --store {input.store}"
        " --split {input.split} --conventions {params.conventions} --logit-threshold {params.threshold}"
        " --regions {params.regions:q} {params.data}"
        " --out {output.metrics} --threads {threads} > {log} 2>&1"


rule robustness:
    input:
        summary="results/{exp}/models/{model}/seed{seed}/summary.json",
        store=lambda w: store_path(w.exp),
        split="results/splits/{exp}.json",
    output:
        scores="results/{exp}/robustness/{model}/seed{seed}.csv",
    log:
        "results/logs/robustness/{exp}/{model}/seed{seed}.log",
    conda:
        "../../envs/training.yaml"
    threads: NET_THREADS
    resources:
        **job_resources("robustness"),
    params:
        medkd=MEDKD,
        run=RUN_FLAGS,
        code=model_code("robustness"),
        model_dir=lambda w: model_dir(w.exp, w.model, w.seed),
        spec=lambda w: canonical_json(exp_cfg(w.exp)["robustness"]),
    shell:
        "{params.medkd} robustness --model-dir {params.model_dir} --store {input.store} --split {input.split}"
        " --robustness-spec {params.spec:q} --out {output.scores} {params.run} --threads {threads}"
        " > {log} 2>&1"
