# fetch -> convert -> split: raw volumes to canonical 2-D slices and case-level splits.
#
# Raw data: embedded datasets are generated into data/<dataset>/ by `fetch` (marker dataset.json);
# download and manual datasets are described in config/datasets.yaml and land in data/<source>/ by
# `fetch_source` (marker .medkd-fetched.json written by medkd.data.sources.fetch.fetch_dataset), where
# <source> is the dataset's `source` (default its own name). A manual dataset whose files are absent stops
# the DAG at planning time (also under -n) with the list of missing paths and where to request the data.
# With `standin_data: true`, fetch_source writes each source's generated stand-in (medkd.data.standins)
# instead, and planning does not ask for the gated files.
include: "sources.smk"


rule fetch:
    output:
        dataset_json=f"{DATA_ROOT}/{{dataset}}/dataset.json",
    log:
        "results/logs/fetch/{dataset}.log",
    retries: NO_RETRY
    conda:
        "../../envs/training.yaml"
    # the embedded generator makes its cases in this many processes (byte-identical for any number): 2 of
    # them take the default's 40 cases from 10 to 7 s, while nothing else can run yet
    threads: 2
    params:
        medkd=MEDKD,
        code=code("fetch"),
        spec=lambda w: canonical_json(CFG["datasets"][w.dataset]),
        out=lambda w: f"{DATA_ROOT}/{w.dataset}",
    shell:
        "{params.medkd} fetch --dataset {wildcards.dataset} --dataset-spec {params.spec:q} --out {params.out} --threads {threads} > {log} 2>&1"


rule fetch_source:
    input:
        manual_files_present,
    output:
        marker=f"{DATA_ROOT}/{{source}}/{_fetch.MARKER_NAME}",
    log:
        "results/logs/fetch_source/{source}.log",
    wildcard_constraints:
        source=r"[a-z0-9][a-z0-9_]*",
    retries: NO_RETRY
    conda:
        "../../envs/training.yaml"
    params:
        medkd=MEDKD,
        code=code("fetch"),
        # with standin_data, "standin": the generator identity: the job writes the source's stand-in
        spec=lambda w: canonical_json(
            {"kind": source_kind(w.source), "source": w.source}
            | ({"standin": standin_identity(w.source)} if CFG["standin_data"] else {})
        ),
        # what defines the source's data in config/datasets.yaml (urls, checksums, layout; not its prose),
        # which the job reads, and the stand-in generator: a new URL, checksum or file list re-fetches (and
        # re-verifies) the source, and so does turning standin_data on or off
        entry=lambda w: canonical_json(
            _fetch.data_defining(source_specs()[w.source], standin_identity(w.source))
            if w.source in source_specs()
            else {}
        ),
        out=lambda w: f"{DATA_ROOT}/{w.source}",
    shell:
        "{params.medkd} fetch --dataset {wildcards.source} --dataset-spec {params.spec:q} --out {params.out} --threads {threads} > {log} 2>&1"


localrules:
    fetch_source,


rule convert:
    input:
        raw=lambda w: fetched_marker(w.dataset),
    output:
        store="results/slices/{dataset}.h5",
        fingerprint="results/slices/{dataset}.json",
    log:
        "results/logs/convert/{dataset}.log",
    conda:
        "../../envs/training.yaml"
    resources:
        **job_resources("convert"),
    params:
        medkd=MEDKD,
        code=lambda w: code_hash(
            "convert", format=[CFG["datasets"][w.dataset]["convert"]["format"]]
        ),
        spec=lambda w: canonical_json(CFG["datasets"][w.dataset]["convert"]),
        src=lambda w: raw_dir(w.dataset),
    shell:
        "{params.medkd} convert --dataset {wildcards.dataset} --convert-spec {params.spec:q} --src {params.src}"
        " --out {output.store} --fingerprint {output.fingerprint} --threads {threads} > {log} 2>&1"


rule split:
    input:
        fingerprint=lambda w: f"results/slices/{exp_dataset(w.exp)}.json",
    output:
        split="results/splits/{exp}.json",
    log:
        "results/logs/split/{exp}.log",
    retries: NO_RETRY
    conda:
        "../../envs/training.yaml"
    params:
        medkd=MEDKD,
        code=code("split"),
        spec=lambda w: canonical_json(exp_cfg(w.exp)["split"]),
    shell:
        "{params.medkd} split --split-spec {params.spec:q} --fingerprint {input.fingerprint} --out {output.split} --threads {threads} > {log} 2>&1"
