"""The conda environments of the rules are generated from requirements.lock and agree with it line for line; each
rule names the environment of its group, and that environment holds every third-party package its step imports."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from importlib.metadata import packages_distributions

import yaml

from medkd import codehash
from medkd.config import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "envs"))
import generate  # noqa: E402  (envs/generate.py)

LOCK = (REPO_ROOT / "requirements.lock").read_text().splitlines()


def _pins(group: str) -> list[str]:
    env = yaml.safe_load((REPO_ROOT / "envs" / f"{group}.yaml").read_text())
    return next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)


def test_envs_are_generated_from_the_lock_line_for_line():
    check = subprocess.run([sys.executable, str(REPO_ROOT / "envs" / "generate.py"), "--check"], capture_output=True,
                           text=True)
    assert check.returncode == 0, check.stderr  # envs/*.yaml are what the generator writes today
    assert sorted(p.stem for p in (REPO_ROOT / "envs").glob("*.yaml")) == sorted(generate.GROUPS)
    for group in generate.GROUPS:
        pins = _pins(group)
        assert pins and all(pin in LOCK for pin in pins), [p for p in pins if p not in LOCK]  # verbatim lock lines
        assert all("==" in pin for pin in pins)
        assert len({generate.normalise(p.split("==")[0]) for p in pins}) == len(pins)
    training, tables = set(_pins("training")), set(_pins("tables"))
    assert "torch==2.13.0" in training and not any(p.startswith("torch==") for p in tables)
    assert not any(p.lower().startswith(("mlflow", "dvc", "snakemake")) for p in training)


def test_env_roots_are_project_dependencies():
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    names = {generate.normalise(re.split(r"[<>=!~;\[ ]", d)[0]) for d in project["dependencies"]}
    for _rules, roots in generate.GROUPS.values():
        assert {generate.normalise(r) for r in roots} <= names


def test_lock_pins_torch_cpu_version():
    assert "torch==2.13.0" in LOCK


def _rules() -> dict[str, str]:
    """rule name -> the conda env its rule file names."""
    out = {}
    for path in sorted((REPO_ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"(?m)^\s*rule ", path.read_text())[1:]:  # indented: a rule under an `if`
            name = block.split(":", 1)[0]
            env = re.search(r'conda:\n\s+"\.\./\.\./envs/(\w+)\.yaml"', block)
            out[name] = env.group(1) if env else None
    return out


def test_every_rule_names_the_env_of_its_group():
    rules = _rules()
    expected = {rule: group for group, (members, _) in generate.GROUPS.items() for rule in members}
    assert rules == expected


def _third_party(paths) -> set[str]:
    found = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {m for m in found if m not in sys.stdlib_module_names and m != "medkd"}


def test_each_env_holds_what_its_rules_import():
    """Every module a rule's `medkd <step>` can import (medkd.codehash's static closure; a registry package it
    reaches adds every module of the package, as the registry imports them all) comes from a pinned package."""
    dist_of = packages_distributions()
    for group, (members, _) in generate.GROUPS.items():
        pinned = {generate.normalise(p.split("==")[0]) for p in _pins(group)}
        for rule in members:
            step = "fetch" if rule == "fetch_source" else rule.replace("_", "-")
            _, roots = codehash.command_source(step)
            files = codehash.closure(set(roots))
            extra = {m for kind, package in codehash.REGISTRIES.items() if codehash.module_file(package) in files
                     for m in codehash.registered(kind).values()}
            files = codehash.closure(set(roots) | extra)
            imports = _third_party(files)
            for module in imports:
                dists = {generate.normalise(d) for d in dist_of.get(module, [module])}
                assert dists & pinned, (group, rule, module)


def test_workflow_files_are_snakefmt_clean():
    """`make lint` checks the Snakefile and rule files with snakefmt (pinned in the dev extra and the lock)."""
    snakefmt = Path(sys.executable).parent / "snakefmt"
    if not snakefmt.exists():
        import pytest

        pytest.skip("snakefmt is not installed in this interpreter's environment (make venv installs it)")
    proc = subprocess.run([str(snakefmt), "--check", "Snakefile", "workflow/rules/"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
