"""Embedded dataset: byte-identical regeneration (in one process or two), MSD layout, labels and contrasts (2 cases at 4 mm)."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from medkd.data.embedded import LABELS, generate_embedded, template_dir

PARAMS = {"n_cases": 2, "seed": 1234, "resolution_mm": 4.0, "lesion": True}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("embedded")
    first = generate_embedded(root / "one", **PARAMS)
    second = generate_embedded(root / "two", **PARAMS, workers=2)  # forked workers write the same bytes
    return first, second


def _files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_template_found_without_importing_nilearn():
    folder = template_dir()
    assert (folder / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz").is_file()
    assert nib.load(folder / "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz").shape == (197, 233, 189)
    code = ("import sys; from medkd.data.embedded import template_dir; template_dir(); "
            "sys.exit(1 if 'nilearn' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_two_runs_are_byte_identical(two_runs):
    first, second = two_runs
    names = _files(first)
    assert names == ["dataset.json", "imagesTr/emb_000.nii.gz", "imagesTr/emb_001.nii.gz",
                     "labelsTr/emb_000.nii.gz", "labelsTr/emb_001.nii.gz"]
    assert names == _files(second)
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_dataset_json_is_msd_schema_and_lists_the_files(two_runs):
    folder = two_runs[0]
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["name"] == "embedded"
    assert meta["modality"] == {"0": "T1", "1": "T2"}
    assert meta["labels"] == {"0": "background", "1": "CSF", "2": "GM", "3": "WM", "4": "lesion"} == LABELS
    assert meta["numTraining"] == 2 and meta["numTest"] == 0 and meta["tensorImageSize"] == "4D"
    assert meta["training"] == [{"image": f"./imagesTr/emb_00{i}.nii.gz", "label": f"./labelsTr/emb_00{i}.nii.gz"}
                                for i in range(2)]
    for entry in meta["training"]:
        assert (folder / entry["image"]).is_file() and (folder / entry["label"]).is_file()
    gen = meta["generator"]
    assert (gen["seed"], gen["n_cases"], gen["resolution_mm"], gen["lesion"]) == (1234, 2, 4.0, True)
    assert "synthetic" in meta["description"].lower() and "not a benchmark" in meta["description"]
    assert "McGill" in meta["licence"]


def test_images_labels_geometry_and_contrast(two_runs):
    folder = two_runs[0]
    for i in range(2):
        img = nib.load(folder / f"imagesTr/emb_00{i}.nii.gz")
        lab = nib.load(folder / f"labelsTr/emb_00{i}.nii.gz")
        # 197x233x189 at 1 mm -> ceil(n / 4) = 50x59x48 at 4 mm
        assert img.shape == (50, 59, 48, 2) and lab.shape == (50, 59, 48)
        assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
        np.testing.assert_allclose(img.affine[:3, :3], np.diag([4.0, 4.0, 4.0]))
        np.testing.assert_allclose(img.affine[:3, 3], [-98.0, -134.0, -72.0])  # template origin kept
        np.testing.assert_array_equal(img.affine, lab.affine)
        data = np.asarray(img.dataobj)
        label = np.asarray(lab.dataobj)
        assert set(np.unique(label).tolist()) == {0, 1, 2, 3, 4}
        t1, t2 = data[..., 0], data[..., 1]
        brain = label > 0
        assert not np.allclose(t1, t2)
        assert (t1[~brain] == 0).all() and (t2[~brain] == 0).all()  # zero outside the brain
        assert (t1[brain] > 0).all() and (t2[brain] > 0).all()  # Rician noise keeps the brain non-zero
        means = {k: (t1[label == k].mean(), t2[label == k].mean()) for k in range(1, 5)}
        assert means[3][0] > means[2][0] > means[1][0]  # T1: WM > GM > CSF
        assert means[1][1] > means[2][1] > means[3][1]  # T2: CSF > GM > WM
        assert means[4][0] < means[3][0] and means[4][1] > means[3][1]  # lesion dark in T1, bright in T2
    first = np.asarray(nib.load(folder / "labelsTr/emb_000.nii.gz").dataobj)
    second = np.asarray(nib.load(folder / "labelsTr/emb_001.nii.gz").dataobj)
    assert (first != second).mean() > 0.01  # the deformation differs between cases


def test_rerun_is_a_no_op_and_new_parameters_replace(tmp_path):
    target = tmp_path / "emb"
    generate_embedded(target, **PARAMS)
    stamp = (target / "imagesTr/emb_000.nii.gz").stat().st_mtime_ns
    generate_embedded(target, **PARAMS)
    assert (target / "imagesTr/emb_000.nii.gz").stat().st_mtime_ns == stamp
    (target / "labelsTr/emb_001.nii.gz").unlink()  # an incomplete dataset is rebuilt
    generate_embedded(target, **PARAMS)
    assert (target / "labelsTr/emb_001.nii.gz").is_file()
    generate_embedded(target, n_cases=1, seed=99, resolution_mm=6.0, lesion=False)
    assert _files(target) == ["dataset.json", "imagesTr/emb_000.nii.gz", "labelsTr/emb_000.nii.gz"]
    label = np.asarray(nib.load(target / "labelsTr/emb_000.nii.gz").dataobj)
    assert set(np.unique(label).tolist()) == {0, 1, 2, 3}  # no lesion
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb"]  # no temp or old directory left


def test_regenerates_after_snakemake_removed_dataset_json(tmp_path):
    """When the generator's code changes, Snakemake deletes the fetch rule's output (dataset.json) before it runs
    the job again; the generated cases left beside it are still an embedded dataset to replace (this used to stop
    with "is not an embedded dataset"). A foreign file among them is still refused."""
    target = tmp_path / "emb"
    generate_embedded(target, **PARAMS)
    (target / "dataset.json").unlink()
    generate_embedded(target, **PARAMS)
    assert (target / "dataset.json").is_file() and "imagesTr/emb_000.nii.gz" in _files(target)
    (target / "dataset.json").unlink()
    (target / "imagesTr" / "mine.nii.gz").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not an embedded dataset"):
        generate_embedded(target, **PARAMS)
    assert (target / "imagesTr" / "mine.nii.gz").read_bytes() == b"x"


def test_refuses_to_replace_a_foreign_directory(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="mine"):
        generate_embedded(foreign, n_cases=1, seed=1234, resolution_mm=8.0, lesion=True)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ValueError, match="n_cases"):
        generate_embedded(tmp_path / "x", n_cases=0, seed=1234, resolution_mm=8.0, lesion=True)


# --- the CPU-independent float path (docs: module docstring of medkd.data.embedded) ---------------------------


def test_rotation_is_the_product_of_the_three_axis_rotations():
    from medkd.data.embedded import _rotation

    angles = np.array([0.3, -1.1, 2.0])
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    got = _rotation(angles)
    np.testing.assert_allclose(got, rz @ ry @ rx, atol=2.0**-24)
    np.testing.assert_allclose(got @ got.T, np.eye(3), atol=1e-6)
    assert np.all(got * 2.0**24 == np.round(got * 2.0**24))  # on the 2**-24 grid


def test_apply_matrix_is_a_matrix_product_without_blas():
    from medkd.data.embedded import _apply_matrix

    rng = np.random.default_rng(0)
    matrix, grid = rng.normal(size=(3, 3)), rng.normal(size=(3, 50))
    np.testing.assert_allclose(_apply_matrix(matrix, grid), matrix @ grid, rtol=1e-12, atol=1e-12)
    # the exact value of one element, summed left to right in float64
    m, g = matrix, grid[:, 7]
    assert _apply_matrix(matrix, grid)[1, 7] == (m[1, 0] * g[0] + m[1, 1] * g[1]) + m[1, 2] * g[2]


@pytest.mark.parametrize("gamma", [0.8, 1.0, 1.2])
def test_gamma_curve_matches_x_to_the_gamma_at_zero_half_and_one(gamma):
    from medkd.data.embedded import _gamma_curve

    x = np.array([0.0, 0.5, 1.0, 0.25, 0.75, -0.1, 1.3])
    y = _gamma_curve(x, gamma)
    np.testing.assert_allclose(y[:3], [0.0, 0.5**gamma, 1.0], atol=2.0**-24)
    assert y[5] == 0.0 and y[6] == 1.0  # clipped to [0, 1]
    assert np.all(np.diff(_gamma_curve(np.linspace(0, 1, 101), gamma)) > 0)  # monotone
    # bends the way x ** gamma does (darker for gamma > 1), within 0.03 of it on [0, 1]
    grid = np.linspace(0, 1, 101)
    assert np.max(np.abs(_gamma_curve(grid, gamma) - grid**gamma)) < 0.03
    if gamma > 1:
        assert y[3] < 0.25 and y[4] < 0.75
    elif gamma < 1:
        assert y[3] > 0.25 and y[4] > 0.75


def test_lesion_edge_rises_from_10_to_90_percent_over_the_stated_width():
    from medkd.data.embedded import _lesion_membership, smooth_edge

    rho = np.linspace(0.5, 1.5, 200001)
    for edge in (0.05, 0.2):
        member = smooth_edge(rho, edge)
        assert member[0] == 1.0 and member[-1] == 0.0 and np.all(np.diff(member) <= 0)
        assert smooth_edge(np.array([1.0]), edge)[0] == 0.5
        at_90, at_10 = rho[np.argmin(np.abs(member - 0.9))], rho[np.argmin(np.abs(member - 0.1))]
        assert abs((at_10 - at_90) - edge) < 1e-4  # the stated 10-90 % width
    member = _lesion_membership((64, 64, 64), 1.0, np.array([32.0, 32.0, 32.0]), np.random.default_rng(5))
    assert member.dtype == np.float32 and member.min() == 0.0 and member.max() == 1.0
    assert 0.0 < float(np.mean((member > 0.0) & (member < 1.0))) < 0.1  # a thin shell of partial membership


def test_images_are_stored_on_the_2_to_the_minus_12_grid(two_runs):
    image = np.asarray(nib.load(two_runs[0] / "imagesTr/emb_000.nii.gz").dataobj)
    assert image.dtype == np.float32 and image.max() > 0.5
    assert np.all(image * 4096 == np.round(image * 4096))


def test_generator_workers_die_with_their_killed_job(tmp_path):
    """A generator job killed with SIGKILL takes its pool's workers with it (they used to wait forever on their
    queue: the fault gauntlet found two left by a killed fetch job)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import os, sys, time\n"
        "from medkd.data import embedded\n"
        "def slow(i):\n"
        "    time.sleep(60)\n"
        "with embedded._case_pool(2, ({}, None, 1.0, 0, False)) as pmap:\n"
        "    print(os.getpid(), flush=True)\n"
        "    list(pmap(slow, range(2)))\n"
    )
    job = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)

    def children(pid: int) -> set[int]:
        out = set()
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    stat = open(f"/proc/{d}/stat").read()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    out.add(int(d))
        return out

    pid = int(job.stdout.readline())
    deadline = time.monotonic() + 20
    while len(workers := children(pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(workers) == 2, workers
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=10)
    deadline = time.monotonic() + 10
    def running(w: int) -> bool:  # a zombie (state Z) has died; only its parent's reaping is left
        try:
            return open(f"/proc/{w}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    while (alive := {w for w in workers if running(w)}) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive, f"workers {alive} outlived their killed job"
