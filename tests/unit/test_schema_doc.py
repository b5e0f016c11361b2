"""config/README.md is the config schema rendered: it documents every key and cannot drift."""

from medkd.config import REPO_ROOT
from medkd.schema_doc import render, schema_paths


def test_config_readme_is_the_rendered_schema():
    committed = (REPO_ROOT / "config" / "README.md").read_text()
    assert committed == render(), "config/README.md is stale: run `python -m medkd.schema_doc > config/README.md`"


def test_every_key_is_documented():
    text = render()
    paths = schema_paths()
    assert {"seeds", "device", "threads", "health/margin_dice", "experiments/<name>/models/<name>/train/epochs",
            "experiments/<name>/models/<name>/losses[]/teacher_tap", "datasets/<name>/convert/format"} <= paths
    for path in paths:
        assert f"| `{path}` |" in text, path
