# undersample: masks, undersampled k-space and zero-filled images (or k-space-truncated low-resolution
# inputs for super-resolution), per case, from the slice store. One file per dataset and mask.


rule undersample:
    input:
        store="results/slices/{dataset}.h5",
        # a `kind: file` mask (e.g. KD-MRI's shipped us_masks) is an input: missing, it stops the plan
        mask=lambda w: (
            [s["path"]]
            if (s := kspace_spec(w.dataset, w.mask))["kind"] == "file"
            else []
        ),
    output:
        kspace="results/kspace/{dataset}/{mask}.h5",
    log:
        "results/logs/undersample/{dataset}/{mask}.log",
    conda:
        "../../envs/training.yaml"
    resources:
        **job_resources("undersample"),
    params:
        medkd=MEDKD,
        code=code("undersample"),
        spec=lambda w: canonical_json(kspace_spec(w.dataset, w.mask)),
    shell:
        "{params.medkd} undersample --mask-spec {params.spec:q} --store {input.store}"
        " --out {output.kspace} --threads {threads} > {log} 2>&1"


# A rehearsal (standin_data: true) generates the masks KD-MRI ships, which a user places by hand under
# data/kdmri_masks/ (not redistributed): same shape, dtype, line axis and number of sampled lines.
if CFG["standin_data"]:

    rule standin_mask:
        output:
            mask="data/kdmri_masks/{organ}/mask_{acc}x.npy",
        log:
            "results/logs/standin_mask/{organ}/{acc}.log",
        wildcard_constraints:
            organ="cardiac|mrbrain|knee",
            acc=r"\d+",
        conda:
            "../../envs/training.yaml"
        params:
            medkd=MEDKD,
            code=code("standin-mask"),
        shell:
            "{params.medkd} standin-mask --organ {wildcards.organ} --acceleration {wildcards.acc}"
            " --out {output.mask} --threads {threads} > {log} 2>&1"
