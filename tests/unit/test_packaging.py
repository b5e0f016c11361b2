"""The conda environment of the rules pins exactly what pyproject.toml pins."""

import tomllib

import yaml

from medkd.config import REPO_ROOT


def test_conda_env_matches_pyproject():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    env = yaml.safe_load((REPO_ROOT / "envs" / "medkd.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert sorted(pip) == sorted(project["dependencies"])


def test_every_rule_names_the_env():
    rules = sorted((REPO_ROOT / "workflow" / "rules").glob("*.smk"))
    for path in rules:
        text = path.read_text()
        assert text.count("rule ") == text.count('conda:\n        "../../envs/medkd.yaml"'), path


def test_lock_pins_torch_cpu_version():
    lock = (REPO_ROOT / "requirements.lock").read_text().splitlines()
    assert "torch==2.13.0" in lock
