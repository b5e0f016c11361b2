"""The rerun hash follows the code a job runs: every medkd module a step of the tiny workflow actually
imported lies within medkd.codehash's static closure of that step (with every registered architecture, loss
and format, since a registry imports all of its package's modules when it discovers them)."""

from __future__ import annotations

import json

import pytest

from medkd import codehash

pytestmark = pytest.mark.slow


def test_every_imported_module_is_in_the_static_closure(tiny_workflow, recorded_imports):
    records = [json.loads(p.read_text()) for p in sorted(recorded_imports.glob("*.json"))]
    if not records:
        pytest.skip("no recorded imports (MEDKD_TINY_WORKFLOW reused a finished run)")
    steps = {r["step"] for r in records}
    # the steps of the tiny workflow's target (results/tables/all.csv); other runs of the session add theirs
    assert {"fetch", "convert", "split", "train", "cache", "infer", "evaluate", "tables", "collect",
            "track"} <= steps, steps
    every = {kind: list(codehash.registered(kind)) for kind in codehash.REGISTRIES}
    for step in sorted(steps):
        files = codehash.step_files(step, **every)
        # medkd.cli itself is hashed piecewise (codehash.command_source: the step's command, main, the helpers
        # and argparse block they use), not as a file of the closure
        static = {codehash._module_name(p) for p in files} | {"medkd.cli"}
        for record in (r for r in records if r["step"] == step):
            outside = set(record["modules"]) - static
            assert not outside, (step, sorted(outside), record["argv"][:4])
