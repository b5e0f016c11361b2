"""The stand-in integration (medkd.data.standins + fetch): the layout check of real data runs on the stand-in,
a stand-in is never taken for real data nor written over it, and toggling standin_data re-fetches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medkd.data import standins
from medkd.data.convert import STANDIN_MARKER, standin_of
from medkd.data.sources import SourceError
from medkd.data.sources.fetch import (
    MARKER_NAME,
    StandinNotRealData,
    _spec_fingerprint,
    data_defining,
    fetch_dataset,
    read_marker,
    require_manual_files,
)
from medkd.data.sources.spec import load_datasets_yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def specs():
    return load_datasets_yaml(ROOT / "config" / "datasets.yaml")


def test_layout_check_fails_when_a_standin_file_is_missing(tmp_path, specs, monkeypatch):
    real = standins.GENERATORS["busi"]

    def lossy(folder, rng):
        declared = real(folder, rng)
        (folder / "malignant" / "malignant (8)_mask.png").unlink()  # declared, but not there
        return declared

    monkeypatch.setitem(standins.GENERATORS, "busi", lossy)
    with pytest.raises(SourceError, match=r"malignant/malignant \(\*\)_mask\.png   \(pattern: 2 found, exactly 3 "
                                          r"expected\)"):
        fetch_dataset("busi", specs["busi"], tmp_path, progress=False, standin=standins.identity("busi"))
    assert not (tmp_path / "busi").exists() and not list(tmp_path.iterdir())  # the temporary folder is gone


def test_standin_expected_replaces_counts_and_wants_every_pattern(specs):
    expected = standins.standin_expected(specs["knee_hammernik"]["expected"],
                                         {"coronal_pd/*/rawdata*.mat": 12, "coronal_pd/*/espirit*.mat": 0},
                                         "knee_hammernik")
    by_path = {e["path"]: e for e in expected}
    assert by_path["coronal_pd/*/rawdata*.mat"]["count"] == 12 and "min_count" not in by_path["coronal_pd/*/rawdata*.mat"]
    assert by_path["coronal_pd/*/espirit*.mat"]["count"] == 1  # at least 1
    assert "count" not in by_path["coronal_pd/"]  # plain directories and files are checked as for real data
    with pytest.raises(ValueError, match="declares no count for the expected pattern 'coronal_pd/\\*/espirit\\*.mat'"):
        standins.standin_expected(specs["knee_hammernik"]["expected"], {"coronal_pd/*/rawdata*.mat": 1}, "knee")
    with pytest.raises(ValueError, match="does not expect"):
        standins.standin_expected(specs["knee_hammernik"]["expected"],
                                  {"coronal_pd/*/rawdata*.mat": 1, "coronal_pd/*/espirit*.mat": 1, "x/*.mat": 1}, "knee")


def test_standin_is_never_real_data(tmp_path, specs):
    ident = standins.identity("busi")
    target = fetch_dataset("busi", specs["busi"], tmp_path, progress=False, standin=ident)
    marker = read_marker(target)
    assert marker["standin"] is True and marker["standin_generator"] == "medkd.data.standins.busi"
    assert standin_of(target) == {"generator": "medkd.data.standins.busi", "seed": 0, "version": standins.STANDIN_VERSION}
    # same request: nothing to do; the fingerprint of real data differs, so a real fetch never accepts it
    assert fetch_dataset("busi", specs["busi"], tmp_path, progress=False, standin=ident) == target
    assert marker["spec_fingerprint"] == _spec_fingerprint(specs["busi"], ident) != _spec_fingerprint(specs["busi"])
    assert data_defining(specs["busi"]) != data_defining(specs["busi"], ident)  # the fetch_source param changes
    # a stand-in in a manual dataset's folder is refused as real data (planning and the fetch job)
    acdc = fetch_dataset("acdc", specs["acdc"], tmp_path, progress=False, standin=standins.identity("acdc"))
    with pytest.raises(StandinNotRealData, match="holds generated stand-in data"):
        require_manual_files("acdc", specs["acdc"], tmp_path)
    with pytest.raises(StandinNotRealData):
        fetch_dataset("acdc", specs["acdc"], tmp_path, progress=False)
    assert read_marker(acdc)["standin"] is True


def test_standin_never_replaces_real_data(tmp_path, specs):
    real = tmp_path / "acdc" / "training" / "patient001"
    real.mkdir(parents=True)
    (real / "Info.cfg").write_text("ED: 1\nES: 12\n")
    with pytest.raises(SourceError, match="not a medkd stand-in"):
        fetch_dataset("acdc", specs["acdc"], tmp_path, progress=False, standin=standins.identity("acdc"))
    assert (real / "Info.cfg").read_text() == "ED: 1\nES: 12\n"
    (tmp_path / "msd_spleen").mkdir()  # a real fetch's marker: also kept
    (tmp_path / "msd_spleen" / MARKER_NAME).write_text(json.dumps({"dataset": "msd_spleen", "kind": "download"}))
    with pytest.raises(SourceError, match="not a medkd stand-in"):
        fetch_dataset("msd_spleen", specs["msd_spleen"], tmp_path, progress=False,
                      standin=standins.identity("msd_spleen"))


def test_identity_and_split_restriction():
    assert STANDIN_MARKER == MARKER_NAME
    with pytest.raises(ValueError, match="no stand-in generator for dataset source 'msd_brain_tumour'"):
        standins.identity("msd_brain_tumour")
    fixed = {"train": ["a", "b", "x"], "test": ["c", "y"]}
    assert standins.restrict_fixed_split(fixed, ["a", "c"]) == {"train": ["a"], "test": ["c"]}
    with pytest.raises(ValueError, match=r"fixed split\(s\) \['test'\] name none"):
        standins.restrict_fixed_split(fixed, ["a"])


def test_generators_are_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    standins.write_standin("busi", a)
    standins.write_standin("busi", b)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
