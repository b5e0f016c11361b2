"""README "Your own dataset", followed literally: an MSD-layout folder outside the repository, the README's
config pointing at it, and the README's command through convert -> split -> teacher -> students -> tables."""

from __future__ import annotations

import csv
import re

from wfhelpers import REPO, VENV_BIN, copy_repo, run, snakemake


def readme_section() -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(r"^## Your own dataset\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "README has no 'Your own dataset' section"
    return m.group(1)


def test_readme_own_dataset_runs_end_to_end(tmp_path):
    from medkd.data.embedded import generate_embedded

    section = readme_section()
    config = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    command = re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()
    assert "/path/to/my_dataset" in config and command.startswith(".venv/bin/snakemake")

    outside = tmp_path / "outside" / "my_dataset"  # outside the repository copy
    generate_embedded(outside, n_cases=5, seed=3, resolution_mm=4.0, lesion=True)
    wd = copy_repo(tmp_path / "repo")
    (wd / "my_data.yaml").write_text(config.replace("/path/to/my_dataset", str(outside)))

    argv = command.split()
    argv[0] = str(VENV_BIN / "snakemake")
    dry = run([*argv, "-n"], wd, timeout=600)
    assert dry.returncode == 0, (dry.stdout + dry.stderr)[-4000:]
    proc = run(argv, wd, timeout=900)
    if proc.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in (wd / "results" / "logs").rglob("*.log"))
        raise AssertionError(f"snakemake failed:\n{proc.stderr[-5000:]}\n{logs[-8000:]}")
    fp = (wd / "results" / "slices" / "mine.json").read_text()
    assert '"n_cases": 5' in fp
    with open(wd / "results" / "tables" / "all.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["model"] for r in rows if r["experiment"] == "mine_kd"} == {"teacher", "student", "student_kd"}
    assert (wd / "results" / "tables" / "mine_kd.md").is_file()
    assert not (wd / "data" / "mine").exists()  # read in place, not copied


def test_missing_local_folder_is_named_while_planning(tmp_path):
    section = readme_section()
    config = re.search(r"```yaml\n(.*?)```", section, re.S).group(1)
    wd = copy_repo(tmp_path / "repo")
    missing = tmp_path / "not_there"
    (wd / "my_data.yaml").write_text(config.replace("/path/to/my_dataset", str(missing)))
    proc = snakemake(["-n", "results/tables/all.csv", "--configfile", "my_data.yaml"], wd, timeout=600)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert f"{missing}   (folder does not exist)" in out and "Local dataset 'mine'" in out


def test_a_bad_input_on_the_submit_host_is_not_retried(tmp_path):
    """Two cases cannot fill train, val and test: the split job fails. With the SLURM profile's `--retries 2`
    Snakemake would run it three times and print the same error three times; the rules that check or summarise
    data on the submit host say `retries: NO_RETRY` (workflow/rules/common.smk), so it fails once, with its log."""
    from medkd.data.embedded import generate_embedded

    config = re.search(r"```yaml\n(.*?)```", readme_section(), re.S).group(1)
    outside = tmp_path / "two_cases"
    generate_embedded(outside, n_cases=2, seed=3, resolution_mm=4.0, lesion=True)
    wd = copy_repo(tmp_path / "repo")
    (wd / "my_data.yaml").write_text(config.replace("/path/to/my_dataset", str(outside)))
    proc = snakemake(["results/splits/mine_kd.json", "--configfile", "my_data.yaml", "--retries", "2",
                      "--show-failed-logs"], wd, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert out.count("Error in rule split") == 1 and "Trying to restart" not in out, out[-5000:]
    assert ("split failed: results/slices/mine.json: the experiment's split does not fit this dataset: cannot give "
            "each of the splits ['test', 'train', 'val'] (non-zero fraction) at least one case: only 2 cases") in out
    assert "Traceback" not in out, out[-5000:]
