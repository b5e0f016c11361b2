"""Checkpoint selection on one unweighted loss term (``select: {metric: val_term, term: ...}``)."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn
import yaml

from medkd.config import REPO_ROOT, ConfigError, load_config, model_spec
from medkd.distill.taps import TapRecorder
from medkd.objective import Objective
from medkd.spec import term_keys
from medkd.train import select, selection, validate


@pytest.fixture
def raw():
    with open(REPO_ROOT / "config" / "config.yaml") as fh:
        return yaml.safe_load(fh)


def with_select(raw, select, losses=None):
    cfg = copy.deepcopy(raw)
    model = cfg["experiments"]["hinton_tissue"]["models"]["student"]
    model["train"]["select"] = select
    if losses is not None:
        model["losses"] = losses
    return cfg


TWO_TERMS = [{"loss": "dice_bce", "weight": 1.0}, {"loss": "dice", "weight": 0.0}]


def test_term_keys_by_logged_name_index_and_loss_name():
    losses = [{"loss": "dice"}, {"loss": "infonce"}, {"loss": "pmd"}, {"loss": "infonce"}]
    assert term_keys(losses, ["dice"]) == ["0:dice"]
    assert term_keys(losses, ["3:infonce", "2"]) == ["3:infonce", "2:pmd"]
    with pytest.raises(ValueError, match="several terms"):
        term_keys(losses, ["infonce"])
    with pytest.raises(ValueError, match="no term matches"):
        term_keys(losses, ["mse"])
    with pytest.raises(ValueError, match="named twice"):
        term_keys(losses, ["dice", "0"])


def test_config_checks_the_term(raw):
    cfg = load_config(with_select(raw, {"metric": "val_term", "term": "dice"}, TWO_TERMS))
    spec = model_spec(cfg, "hinton_tissue", "student")
    assert spec.train.select.term == ("dice",)
    assert selection(spec) == ("val_term", "min")
    with pytest.raises(ConfigError, match="select/term: required"):
        load_config(with_select(raw, {"metric": "val_term"}, TWO_TERMS))
    with pytest.raises(ConfigError, match="select/term: select term 'kl_div': no term matches"):
        load_config(with_select(raw, {"metric": "val_term", "term": "kl_div"}, TWO_TERMS))
    with pytest.raises(ConfigError, match="only with metric val_term"):
        load_config(with_select(raw, {"metric": "val_loss", "term": "dice"}, TWO_TERMS))


def test_default_select_has_no_term(raw):
    spec = model_spec(load_config(raw), "hinton_tissue", "teacher")
    assert spec.train.select.term is None and "term" not in spec.to_dict()["train"]["select"]


class FixedData:
    """Two validation slices of a binary 8x8 segmentation."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.image = torch.randn(2, 1, 8, 8, generator=g)
        self.target = torch.randint(0, 2, (2, 8, 8), generator=g)

    def __len__(self):
        return 2

    def batch(self, idx):
        return {"image": self.image[idx], "target": self.target[idx]}


def fake_run(spec):
    model = nn.Conv2d(1, 1, 1)  # one logit channel (binary losses)
    objective = Objective(spec.losses)
    from medkd.runtime import autocast, to_device

    device = torch.device("cpu")
    return SimpleNamespace(model=model, val_data=FixedData(), spec=spec, device=device, teachers={},
                           objective=objective, recorder=TapRecorder(model, objective.student_taps()),
                           to_device=lambda batch: to_device(batch, device),
                           autocast=lambda: autocast(device, spec.train.precision),
                           teacher_outputs=lambda split, index, batch: {})


def test_validate_reports_every_term_unweighted_and_selects_on_the_named_one(raw, tmp_path):
    cfg = load_config(with_select(raw, {"metric": "val_term", "term": "dice"}, TWO_TERMS))
    spec = model_spec(cfg, "hinton_tissue", "student")
    run = fake_run(spec)
    out = validate(run, 0)
    assert set(out) >= {"val_loss", "val_dice", "val_term", "val_term:0:dice_bce", "val_term:1:dice"}
    # weight 0: the Dice term adds nothing to the objective, but it is what selection reads
    assert math.isclose(out["val_loss"], out["val_term:0:dice_bce"], rel_tol=1e-6)
    assert out["val_term"] == out["val_term:1:dice"] and 0 < out["val_term"] <= 1

    run.metric, run.mode = selection(spec)
    state = SimpleNamespace(best=None, best_epoch=None)
    assert select(run, state, {"epoch": 0, **out}, tmp_path)
    assert not select(run, state, {"epoch": 1, **out, "val_term": out["val_term"] + 0.1}, tmp_path)
    assert select(run, state, {"epoch": 2, **out, "val_term": out["val_term"] - 0.1}, tmp_path)
    assert state.best_epoch == 2


def test_several_terms_are_summed_unweighted(raw):
    losses = [{"loss": "dice_bce", "weight": 1.0}, {"loss": "dice", "weight": 0.2}]
    cfg = load_config(with_select(raw, {"metric": "val_term", "term": ["dice_bce", "1:dice"]}, losses))
    out = validate(fake_run(model_spec(cfg, "hinton_tissue", "student")), 0)
    assert math.isclose(out["val_term"], out["val_term:0:dice_bce"] + out["val_term:1:dice"], rel_tol=1e-9)
    assert math.isclose(out["val_loss"], out["val_term:0:dice_bce"] + 0.2 * out["val_term:1:dice"], rel_tol=1e-5)
