# Helpers of the data rules (data.smk) for download and manual datasets: where their raw files live, the
# marker that proves they are present, and the planning-time check of manual datasets.
from medkd.data.sources import fetch as _fetch, spec as _spec  # noqa: E402

_DATASETS_YAML = Path(workflow.basedir) / "config" / "datasets.yaml"
_SOURCE_SPECS = {}


def source_specs():
    """config/datasets.yaml, validated, read once and only when a download/manual dataset is used."""
    if not _SOURCE_SPECS:
        _SOURCE_SPECS.update(_spec.load_datasets_yaml(_DATASETS_YAML))
    return _SOURCE_SPECS


def dataset_source(dataset):
    """The config/datasets.yaml entry (and data/ folder) of a download or manual dataset."""
    return CFG["datasets"][dataset].get("source", dataset)


def raw_dir(dataset):
    d = CFG["datasets"][dataset]
    return f"{DATA_ROOT}/{dataset if d['kind'] == 'embedded' else dataset_source(dataset)}"


def fetched_marker(dataset):
    """The file that proves the raw data of a config dataset is present."""
    if CFG["datasets"][dataset]["kind"] == "embedded":
        return f"{DATA_ROOT}/{dataset}/dataset.json"
    return f"{raw_dir(dataset)}/{_fetch.MARKER_NAME}"


def source_kind(source):
    kinds = {d["kind"] for name, d in CFG["datasets"].items()
             if d["kind"] != "embedded" and dataset_source(name) == source}
    if len(kinds) != 1:
        raise ValueError(f"source {source!r}: used by no config dataset, or with different kinds {sorted(kinds)}")
    return kinds.pop()


def manual_files_present(wildcards):
    """No input files; for a manual source, raise the missing-files message while the DAG is planned."""
    specs = source_specs()
    if wildcards.source not in specs:
        raise ValueError(f"dataset source {wildcards.source!r} is not described in {_DATASETS_YAML}")
    spec = specs[wildcards.source]
    if spec["kind"] == "manual":
        _fetch.require_manual_files(wildcards.source, spec, DATA_ROOT)
    return []
