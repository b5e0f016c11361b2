# cache: a teacher's logits and uncertainty maps on the cases its cache-reading students train and validate on
# (medkd.config.cache_splits), computed once per seed and read by every student that distils from it.


rule cache:
    input:
        summary="results/{exp}/models/{model}/seed{seed}/summary.json",
        store=lambda w: store_path(w.exp),
        split="results/splits/{exp}.json",
    output:
        cache="results/{exp}/cache/{model}/seed{seed}.h5",
    log:
        "results/logs/cache/{exp}/{model}/seed{seed}.log",
    conda:
        "../../envs/training.yaml"
    threads: NET_THREADS
    resources:
        **job_resources("cache"),
    params:
        medkd=MEDKD,
        run=RUN_FLAGS,
        code=model_code("cache"),
        model_dir=lambda w: model_dir(w.exp, w.model, w.seed),
        splits=lambda w: ",".join(cache_splits(CFG, w.exp, w.model)),  # only the cases its students read
    shell:
        "{params.medkd} cache --teacher-dir {params.model_dir} --store {input.store} --split {input.split}"
        " --splits {params.splits} --out {output.cache} {params.run} --threads {threads} > {log} 2>&1"
