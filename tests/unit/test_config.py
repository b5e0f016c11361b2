"""Config validation: schema errors name the key; references are checked; specs and hashes are stable."""

import copy

import pytest
import yaml

from medkd.config import REPO_ROOT, ConfigError, load_config, model_spec, spec_hash

DEFAULT = REPO_ROOT / "config" / "config.yaml"


@pytest.fixture
def raw():
    with open(DEFAULT) as fh:
        return yaml.safe_load(fh)


def test_default_config_is_valid_and_filled(raw):
    cfg = load_config(raw)
    model = cfg["experiments"]["hinton_tissue"]["models"]["student"]
    # defaults filled from the schema
    assert model["train"]["subset"] == "train"
    assert model["losses"][0]["weight"] == 1.0
    assert cfg["mlflow"]["tracking_uri"].startswith("sqlite:///")


def test_unknown_key_is_named(raw):
    bad = copy.deepcopy(raw)
    bad["experiments"]["hinton_tissue"]["models"]["student"]["train"]["epoch"] = 3
    with pytest.raises(ConfigError, match=r"experiments/hinton_tissue/models/student/train.*'epoch' was unexpected"):
        load_config(bad)


def test_wrong_type_is_named(raw):
    bad = copy.deepcopy(raw)
    bad["experiments"]["hinton_tissue"]["models"]["teacher"]["train"]["batch_size"] = "sixteen"
    with pytest.raises(ConfigError, match=r"models/teacher/train/batch_size"):
        load_config(bad)


def test_unknown_teacher_is_named(raw):
    bad = copy.deepcopy(raw)
    bad["experiments"]["hinton_tissue"]["models"]["student_kd"]["losses"][1]["teacher"] = "professor"
    with pytest.raises(ConfigError, match=r"student_kd/losses/1/teacher.*professor"):
        load_config(bad)


def test_student_cannot_be_a_teacher(raw):
    bad = copy.deepcopy(raw)
    bad["experiments"]["hinton_tissue"]["models"]["student_kd"]["teachers"] = ["student"]
    bad["experiments"]["hinton_tissue"]["models"]["student_kd"]["losses"][1]["teacher"] = "student"
    with pytest.raises(ConfigError, match="not teacher"):
        load_config(bad)


def test_unknown_dataset_and_subset(raw):
    bad = copy.deepcopy(raw)
    bad["experiments"]["hinton_tissue"]["dataset"] = "nowhere"
    with pytest.raises(ConfigError, match="unknown dataset 'nowhere'"):
        load_config(bad)
    bad = copy.deepcopy(raw)
    bad["experiments"]["hinton_tissue"]["models"]["student"]["train"]["subset"] = "half"
    with pytest.raises(ConfigError, match="unknown split or subset 'half'"):
        load_config(bad)


def test_init_cycle_rejected(raw):
    bad = copy.deepcopy(raw)
    models = bad["experiments"]["hinton_tissue"]["models"]
    models["student"]["init_from"] = "student_kd"
    models["student_kd"]["init_from"] = "student"
    with pytest.raises(ConfigError, match="init_from cycle"):
        load_config(bad)


def test_spec_hash_changes_only_with_that_model(raw):
    cfg = load_config(raw)
    before = {m: spec_hash(model_spec(cfg, "hinton_tissue", m)) for m in ("teacher", "student", "student_kd")}
    changed = copy.deepcopy(raw)
    changed["experiments"]["hinton_tissue"]["models"]["student_kd"]["train"]["optimizer"]["lr"] = 0.01
    cfg2 = load_config(changed)
    after = {m: spec_hash(model_spec(cfg2, "hinton_tissue", m)) for m in ("teacher", "student", "student_kd")}
    assert before["teacher"] == after["teacher"]
    assert before["student"] == after["student"]
    assert before["student_kd"] != after["student_kd"]


def test_include_merges_experiments(tmp_path, raw):
    extra = {"experiments": {"copy": copy.deepcopy(raw["experiments"]["hinton_tissue"])}}
    (tmp_path / "extra.yaml").write_text(yaml.safe_dump(extra))
    main = copy.deepcopy(raw)
    main["include"] = ["extra.yaml"]
    cfg = load_config(main, root=tmp_path)
    assert set(cfg["experiments"]) == {"hinton_tissue", "copy"}


def test_cache_splits_are_the_cases_its_students_read():
    """A teacher cache holds the union of its cache-reading students' training subsets and validation
    splits, in config order, each name once; a teacher no student reads from the cache gets train + val."""
    from medkd.config import cache_splits

    cfg = load_config(REPO_ROOT / "config" / "config.yaml")
    assert cache_splits(cfg, "pcd_wm", "teacher") == ["pcd_cases", "val_small"]  # 6 + 4 of 32 cases
    assert cache_splits(cfg, "hinton_tissue", "teacher") == ["train", "val_small"]
    assert cache_splits(cfg, "mtms_wm", "t1") == ["train", "val"]  # read online only: nothing narrows it
    kd = cfg["experiments"]["pcd_wm"]["models"]["kd"]
    kd["train"] = {**kd["train"], "val_split": "val"}  # the students share one YAML anchor: copy it
    assert cache_splits(cfg, "pcd_wm", "teacher") == ["pcd_cases", "val", "val_small"]


def test_load_yaml_reads_every_project_yaml_as_safe_load_does(tmp_path):
    """medkd.io.load_yaml (libyaml's C parser) gives the same documents as yaml.safe_load for every config,
    schema and profile of the repository, and refuses what safe_load refuses (python tags, bad syntax)."""
    from medkd.io import load_yaml

    files = sorted(p for d in ("config", "workflow/schemas", "profiles", "tests/integration")
                   for p in (REPO_ROOT / d).rglob("*.yaml"))
    assert len(files) >= 15
    for path in files:
        text = path.read_text()
        assert load_yaml(text) == yaml.safe_load(text), path
    assert getattr(yaml, "CSafeLoader", None) is not None  # the wheels ship libyaml: the fast path is taken
    for bad in ("a: !!python/object:os.system {}\n", "a: [1, 2\n"):
        with pytest.raises(yaml.YAMLError):
            load_yaml(bad)
    bad_file = tmp_path / "bad.yaml"
    bad_file.write_text("experiments: [\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad_file)
