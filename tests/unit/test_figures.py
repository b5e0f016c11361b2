"""The experiment figures: a dot plot whose axis spans the data, and one curve per model over its seeds."""

import json

import pandas as pd

from medkd.figures import plot_experiment


def test_dot_plot_spans_the_data_and_curves_are_one_per_model(tmp_path):
    rows, metrics, dirs = [], [], []
    for model, base in (("s", 0.81), ("kd", 0.86)):
        rows.append({"model": model, "class": "wm", "metric": "dice", "convention": "engine", "mean": base + 0.01,
                     "sd": 0.01})
        for seed in (0, 1, 2):
            for case in range(4):
                metrics.append({"model": model, "seed": seed, "case": f"c{case}", "class": "wm", "metric": "dice",
                                "convention": "engine", "value": base + 0.005 * case + 0.002 * seed})
            d = tmp_path / model / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "config.json").write_text(json.dumps({"spec": {"model": model}, "seed": seed}))
            key = "val_dice" if model == "kd" or seed < 2 else "val_loss"  # s seed 2 lacks val_dice
            (d / "epochs.jsonl").write_text("".join(json.dumps({"epoch": e, "val_loss": 1.0, key: 0.5 + 0.1 * e}) + "\n"
                                                    for e in range(3)))
            dirs.append(d)
    shown = plot_experiment(pd.DataFrame(rows), "segmentation", dirs, "t", tmp_path / "e.png", tmp_path / "c.png",
                            pd.DataFrame(metrics))
    assert (tmp_path / "e.png").stat().st_size > 10_000 and (tmp_path / "c.png").stat().st_size > 10_000
    low, high = shown["ylim"]
    assert 0.78 < low < 0.81 and 0.879 < high < 0.9  # the 0.81-0.88 spread fills the axis; no bar from 0
    assert shown["curves"] == {"s": 2, "kd": 3} and shown["missing"] == ["s"]  # s seed 2 is named, not drawn
