"""kind: local datasets (checked while planning) and the all-at-once report of missing inputs."""

from __future__ import annotations

import copy
import json

import pytest
import yaml

from medkd.config import REPO_ROOT, ConfigError, load_config
from medkd.data.formats import check_layout
from medkd.data.sources.local import InputsMissing, input_problems, local_dir, local_problems


def _msd(root, n=2, missing_label=None):
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    training = []
    for i in range(n):
        (root / "imagesTr" / f"c{i}.nii.gz").write_bytes(b"x")
        if i != missing_label:
            (root / "labelsTr" / f"c{i}.nii.gz").write_bytes(b"x")
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "bg"}, "training": training}))
    return root


def test_relative_and_absolute_paths(tmp_path):
    assert local_dir({"path": "../mine"}, tmp_path) == tmp_path / "../mine"
    assert local_dir({"path": str(tmp_path / "x")}, "/elsewhere") == tmp_path / "x"


def test_missing_folder_and_wrong_layout_name_the_exact_paths(tmp_path):
    assert check_layout("msd", tmp_path / "nope") == [f"{tmp_path / 'nope'}   (folder does not exist)"]
    (tmp_path / "empty").mkdir()
    assert check_layout("msd", tmp_path / "empty") == [f"{tmp_path / 'empty' / 'dataset.json'}   (missing)"]
    src = _msd(tmp_path / "ds", n=3, missing_label=1)
    assert check_layout("msd", src) == [
        f"{src / 'labelsTr' / 'c1.nii.gz'}   (listed in dataset.json as training entry 1 'label', missing)"]
    assert check_layout("busi_png", src) == [
        f"{src / '*/*_mask.png'}   (no file matches; format 'busi_png' expects at least one)"]
    (src / "benign").mkdir()
    (src / "benign" / "benign (1)_mask.png").write_bytes(b"x")
    assert check_layout("busi_png", src) == []


def test_dvc_file_must_track_the_folder(tmp_path):
    src = _msd(tmp_path / "ds")
    spec = {"kind": "local", "path": str(src), "dvc": str(tmp_path / "ds.dvc"), "convert": {"format": "msd"}}
    assert local_problems("mine", spec) == [f"{tmp_path / 'ds.dvc'}: DVC file not found"]
    (tmp_path / "ds.dvc").write_text(yaml.safe_dump({"outs": [{"md5": "0" * 32 + ".dir", "path": "other"}]}))
    assert "not the dataset folder" in local_problems("mine", spec)[0]
    (tmp_path / "ds.dvc").write_text(yaml.safe_dump({"outs": [{"md5": "0" * 32 + ".dir", "path": "ds"}]}))
    assert local_problems("mine", spec) == []


def test_every_missing_dataset_is_listed_at_once(tmp_path):
    data_root = tmp_path / "data"
    specs = {name: {"kind": "manual", "expected": [{"path": "dataset.json"}, {"path": "imagesTr/*.nii.gz", "min_count": 1}],
                    "request_url": f"https://example.org/{name}", "instructions": "place the files", "licence": "L"}
             for name in ("gated_a", "gated_b")}
    datasets = {"gated_a": {"kind": "manual"}, "gated_b": {"kind": "manual"},
                "mine": {"kind": "local", "path": str(tmp_path / "mine"), "convert": {"format": "msd"}},
                "ok": {"kind": "local", "path": str(_msd(tmp_path / "ok")), "convert": {"format": "msd"}},
                "unused": {"kind": "local", "path": str(tmp_path / "nowhere"), "convert": {"format": "msd"}}}
    problems = input_problems(datasets, ["gated_a", "mine", "ok", "gated_b"], lambda: specs, data_root)
    assert list(problems) == ["gated_a", "mine", "gated_b"]  # "ok" is ready, "unused" is not used
    err = InputsMissing(problems)
    text = str(err)
    assert text.startswith("3 datasets are missing or incomplete: gated_a, mine, gated_b.")
    for needle in (f"{data_root}/gated_a/dataset.json", f"{data_root}/gated_b/imagesTr/*.nii.gz",
                   "https://example.org/gated_b", f"{tmp_path / 'mine'}   (folder does not exist)", "[3/3]"):
        assert needle in text
    assert str(InputsMissing({"mine": problems["mine"]})) == problems["mine"]


def test_config_schema_requires_path_only_for_local():
    with open(REPO_ROOT / "config" / "config.yaml") as fh:
        raw = yaml.safe_load(fh)
    cfg = copy.deepcopy(raw)
    cfg["datasets"]["mine"] = {"kind": "local", "path": "../mine", "convert": {"format": "msd"}}
    assert load_config(cfg)["datasets"]["mine"]["path"] == "../mine"
    cfg["datasets"]["mine"] = {"kind": "local", "convert": {"format": "msd"}}
    with pytest.raises(ConfigError, match="path"):
        load_config(cfg)
    cfg["datasets"]["mine"] = {"kind": "manual", "path": "../mine", "convert": {"format": "msd"}}
    with pytest.raises(ConfigError):
        load_config(cfg)
