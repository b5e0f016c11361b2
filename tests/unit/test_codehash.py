"""medkd.codehash: the rerun matrix. A hash changes exactly when the code a step runs changes: comments,
docstrings and line breaks change nothing; a CLI helper, an argparse default of the step, a loss or the
engine change the steps that run them and no other."""

from __future__ import annotations

import shutil

import pytest

from medkd import codehash

STEPS = {"fetch": {}, "convert": {"format": ["msd"]}, "train": {"model": ["unet"], "loss": ["cross_entropy"]},
         "train_kd": {"model": ["unet"], "loss": ["cross_entropy", "kl_div"]},
         "infer": {"model": ["unet"]}, "evaluate": {}, "tables": {}}


@pytest.fixture
def src(tmp_path, monkeypatch):
    """A copy of the medkd sources that the hashes read (caches cleared before and after)."""
    shutil.copytree(codehash.SRC / "medkd", tmp_path / "medkd", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(codehash, "SRC", tmp_path)
    for cached in (codehash.registered, codehash._code_hash):
        cached.cache_clear()
    yield tmp_path / "medkd"
    for cached in (codehash.registered, codehash._code_hash):
        cached.cache_clear()


def _hashes() -> dict[str, str]:
    for cached in (codehash.registered, codehash._code_hash):
        cached.cache_clear()
    return {name: codehash.code_hash(name.split("_kd")[0], **names) for name, names in STEPS.items()}


def _edit(path, old, new):
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


def _changed(before, after) -> set[str]:
    return {k for k in before if before[k] != after[k]}


def test_comments_docstrings_and_line_breaks_rerun_nothing(src):
    before = _hashes()
    _edit(src / "codehash.py", '"""Which source files', '"""Which (edited) source files')
    _edit(src / "config.py", "\nimport ", "\n# a new comment\nimport ")
    _edit(src / "train.py", "\ndef ", "\n\n# spacing\ndef ")
    _edit(src / "cli.py", '    """Generate (embedded), download', '    """Make (embedded), download')
    assert _hashes() == before


def test_a_cli_helper_reruns_the_steps_that_call_it(src):
    before = _hashes()
    _edit(src / "cli.py", "def _check_model_inputs(model_dir, store) -> None:\n",
          "def _check_model_inputs(model_dir, store) -> None:\n    model_dir = model_dir\n")
    changed = _changed(before, _hashes())
    assert {"infer"} <= changed and not changed & {"fetch", "convert", "tables"}, changed


def test_main_reruns_every_step(src):
    before = _hashes()
    _edit(src / "cli.py", "    startup = process_age()\n", "    startup = process_age()\n    startup = startup\n")
    assert _changed(before, _hashes()) == set(STEPS)


@pytest.mark.parametrize("old,new,expected", [
    ('sp.add_argument("--logit-threshold", type=float, default=0.0', 'sp.add_argument("--logit-threshold", type=float, default=0.5', {"evaluate"}),
    ('sp.add_argument("--split-name", default="test")', 'sp.add_argument("--split-name", default="val")', {"infer"}),
    ('sp.add_argument("--datasets-yaml", default=None,', 'sp.add_argument("--datasets-yaml", default="datasets.yaml",', {"fetch"}),
])
def test_an_argparse_default_reruns_its_step_only(src, old, new, expected):
    before = _hashes()
    _edit(src / "cli.py", old, new)
    assert _changed(before, _hashes()) == expected


def test_a_loss_reruns_the_students_using_it_and_the_engine_every_training(src):
    before = _hashes()
    loss_module = codehash.registered("loss")["kl_div"].split(".")[-1]
    _edit(src / "distill" / f"{loss_module}.py", "\ndef ", "\ndef _unused():\n    return 1\n\n\ndef ")
    assert _changed(before, _hashes()) == {"train_kd"}
    before = _hashes()
    _edit(src / "train.py", "\ndef ", "\ndef _unused():\n    return 2\n\n\ndef ")
    assert _changed(before, _hashes()) >= {"train", "train_kd"} and "fetch" not in _changed(before, _hashes())


def test_normalised_drops_docstrings_but_not_strings():
    import ast

    a = ast.parse('def f():\n    """doc"""\n    return "x"\n')
    b = ast.parse('def f():\n    # comment\n    return "x"\n')
    c = ast.parse('def f():\n    return "y"\n')
    d = ast.parse('def f():\n    """only a docstring"""\n')
    assert codehash.normalised(a) == codehash.normalised(b) != codehash.normalised(c)
    assert "Pass" in codehash.normalised(d)
