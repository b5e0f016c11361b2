# Helpers of the data rules (data.smk) for download, manual and local datasets: where their raw files live,
# the marker (or folder) that proves they are present, and the planning-time check of manual and local
# datasets, which names every missing dataset of the config at once (medkd.data.sources.local).
from medkd.data.sources import (
    fetch as _fetch,
    local as _local,
    spec as _spec,
)  # noqa: E402

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
    if d["kind"] == "local":
        return str(_local.local_dir(d))
    return (
        f"{DATA_ROOT}/{dataset if d['kind'] == 'embedded' else dataset_source(dataset)}"
    )


_INPUT_PROBLEMS = {}


def input_problems():
    """Every manual source with missing files and every local dataset not ready, of the datasets this
    config's experiments use (checked once per planning). With standin_data only local datasets are
    checked: the fetch step writes the stand-ins of manual sources."""
    if "all" not in _INPUT_PROBLEMS:
        used = list(dict.fromkeys(e["dataset"] for e in CFG["experiments"].values()))
        if CFG["standin_data"]:
            used = [u for u in used if CFG["datasets"][u]["kind"] == "local"]
        _INPUT_PROBLEMS["all"] = _local.input_problems(
            CFG["datasets"], used, source_specs, DATA_ROOT
        )
    return _INPUT_PROBLEMS["all"]


def require_input(name):
    """Raise InputsMissing listing every missing dataset of the config (``name`` first) if ``name`` is one."""
    problems = input_problems()
    if name in problems:
        raise _local.InputsMissing({name: problems[name], **problems})


def fetched_marker(dataset):
    """The file(s) that prove the raw data of a config dataset is present: a local dataset's folder (and its
    .dvc file), checked while planning."""
    d = CFG["datasets"][dataset]
    if d["kind"] == "embedded":
        return f"{DATA_ROOT}/{dataset}/dataset.json"
    if d["kind"] == "local":
        require_input(dataset)
        return [raw_dir(dataset)] + (
            [str(_local.local_dir({"path": d["dvc"]}))] if d.get("dvc") else []
        )
    return f"{raw_dir(dataset)}/{_fetch.MARKER_NAME}"


def source_kind(source):
    kinds = {
        d["kind"]
        for name, d in CFG["datasets"].items()
        if d["kind"] not in ("embedded", "local") and dataset_source(name) == source
    }
    if len(kinds) != 1:
        raise ValueError(
            f"source {source!r}: used by no config dataset, or with different kinds {sorted(kinds)}"
        )
    return kinds.pop()


def standin_identity(source):
    """With standin_data: the stand-in generator of ``source`` (medkd.data.standins.identity; an error names
    the sources that have one); None otherwise. Part of the fetch_source params, so toggling re-fetches.
    """
    if not CFG["standin_data"]:
        return None
    from medkd.data import standins as _standins

    return _standins.identity(source)


def manual_files_present(wildcards):
    """No input files; for a manual source, raise the missing-files message while the DAG is planned
    (not with standin_data: the fetch step writes the source's stand-in)."""
    specs = source_specs()
    if wildcards.source not in specs:
        raise ValueError(
            f"dataset source {wildcards.source!r} is not described in {_DATASETS_YAML}"
        )
    spec = specs[wildcards.source]
    if standin_identity(wildcards.source) is not None:
        return []
    if spec["kind"] == "manual":
        require_input(wildcards.source)
        _fetch.require_manual_files(wildcards.source, spec, DATA_ROOT)
    return []
