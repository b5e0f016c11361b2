# fetch -> convert -> split: raw volumes to canonical 2-D slices and case-level splits.


rule fetch:
    output:
        dataset_json=f"{DATA_ROOT}/{{dataset}}/dataset.json",
    params:
        spec=lambda w: canonical_json(CFG["datasets"][w.dataset]),
        out=lambda w: f"{DATA_ROOT}/{w.dataset}",
    log:
        "results/logs/fetch/{dataset}.log",
    conda:
        "../../envs/medkd.yaml"
    shell:
        "workflow/scripts/medkd fetch --dataset {wildcards.dataset} --dataset-spec {params.spec:q} --out {params.out} > {log} 2>&1"


rule convert:
    input:
        dataset_json=rules.fetch.output.dataset_json,
    output:
        store="results/slices/{dataset}.h5",
        fingerprint="results/slices/{dataset}.json",
    params:
        spec=lambda w: canonical_json(CFG["datasets"][w.dataset]["convert"]),
        src=lambda w: f"{DATA_ROOT}/{w.dataset}",
    log:
        "results/logs/convert/{dataset}.log",
    conda:
        "../../envs/medkd.yaml"
    shell:
        "workflow/scripts/medkd convert --dataset {wildcards.dataset} --convert-spec {params.spec:q} --src {params.src}"
        " --out {output.store} --fingerprint {output.fingerprint} > {log} 2>&1"


rule split:
    input:
        fingerprint=lambda w: f"results/slices/{exp_dataset(w.exp)}.json",
    output:
        split="results/splits/{exp}.json",
    params:
        spec=lambda w: canonical_json(exp_cfg(w.exp)["split"]),
    log:
        "results/logs/split/{exp}.log",
    conda:
        "../../envs/medkd.yaml"
    shell:
        "workflow/scripts/medkd split --split-spec {params.spec:q} --fingerprint {input.fingerprint} --out {output.split} > {log} 2>&1"
