"""Stand-in data: small generated copies of the gated or large paper datasets, in their exact raw layout.

The paper configs (``config/paper.yaml``) read nine raw datasets that cannot be downloaded here (ACDC,
MRBrainS13, the knee data of Hammernik et al., Calgary-Campinas-359, HECKTOR 2021, BraTS 2021 are gated;
MSD spleen, BUSI and PI-CAI are large). With the top-level config key ``standin_data: true`` the
``fetch_source`` rule writes, instead of downloading or verifying a source, the stand-in of this module
(:func:`write_standin`) into a temporary folder beside ``data/<source>``, checks it with the *same* layout
check as real data (``expected`` of ``config/datasets.yaml``, with each pattern's count replaced by the number
the generator declares it wrote, :func:`standin_expected`), writes the marker with ``"standin": true`` and
renames it into place (:func:`medkd.data.sources.fetch.fetch_dataset`). The converters read it unchanged.

Every generator writes a few cases with the real directory structure and file names, file format, dtype,
label values, voxel spacing and in-plane matrix size of its dataset; the depth is the real one where it is
fixed (BraTS 155, MRBrainS 48) and a small real-looking one otherwise. Content is cheap and vectorised: a
body/organ made of ellipsoids with a labelled structure, intensity by tissue plus noise, in realistic value
ranges (HU for CT, positive MR magnitudes, SUV for PET), deterministic for a seed. docs/datasets.md,
"Stand-in data", lists per dataset what is generated and what of the real layout is uncertain.

Case ids are real-looking and chosen so that every split of ``config/experiments/*.yaml`` gets cases: the
fixed splits (ACDC by subset, BUSI's 680/100) name the real cases, so the stand-in writes cases they name
and ``medkd split`` keeps only the listed cases that exist when the fingerprint says ``standin``
(:func:`restrict_fixed_split`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np

STANDIN_VERSION = 1
"""Bumped when a generator's output changes, so ``fetch_source`` re-writes the stand-ins (it is part of
:func:`identity`, hence of the fetch spec fingerprint)."""

DEFAULT_SEED = 0

Generator = Callable[[Path, np.random.Generator], dict[str, int]]
"""``(folder, rng) -> {expected pattern of config/datasets.yaml: number of files written for it}``."""

GENERATORS: dict[str, Generator] = {}


def _register(name: str) -> Callable[[Generator], Generator]:
    def deco(fn: Generator) -> Generator:
        GENERATORS[name] = fn
        return fn
    return deco


# ------------------------------------------------------------------------------------------ public API


def identity(source: str, seed: int = DEFAULT_SEED) -> dict:
    """What defines the stand-in of ``source``: generator, seed, version (recorded in the fetch marker and
    part of the fetch spec fingerprint).

    Raises:
        ValueError: no stand-in generator for ``source`` (names the ones there are).
    """
    if source not in GENERATORS:
        raise ValueError(f"no stand-in generator for dataset source {source!r} (standin_data: true); stand-ins "
                         f"exist for {sorted(GENERATORS)}")
    fn = GENERATORS[source]
    return {"generator": f"{fn.__module__}.{fn.__name__}", "seed": int(seed), "version": STANDIN_VERSION}


def write_standin(source: str, folder: str | Path, seed: int = DEFAULT_SEED) -> dict[str, int]:
    """Write the stand-in of ``source`` into ``folder`` (created; should be empty).

    Returns:
        expected pattern -> number of files the generator wrote for it (its declaration; the fetch step
        checks the folder against it with the layout check of real data).
    """
    identity(source, seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return dict(GENERATORS[source](folder, np.random.default_rng([int(seed), _stable(source)])))


def standin_expected(expected: Iterable[Mapping], declared: Mapping[str, int], source: str) -> list[dict]:
    """The ``expected`` entries of a source with every pattern's ``count`` / ``min_count`` replaced by the
    exact number the stand-in declares it wrote (at least 1); plain files and directories stay as they are.

    Raises:
        ValueError: a pattern of ``expected`` the generator declares nothing for, or a declared pattern
            that ``expected`` does not list (the generator and config/datasets.yaml disagree).
    """
    out, seen = [], set()
    for entry in expected:
        entry = dict(entry)
        path = entry["path"]
        if any(c in path for c in "*?["):
            if path not in declared:
                raise ValueError(f"stand-in of {source!r} declares no count for the expected pattern {path!r} "
                                 f"(it declares {sorted(declared)})")
            seen.add(path)
            entry.pop("min_count", None)
            entry["count"] = max(1, int(declared[path]))
        out.append(entry)
    extra = sorted(set(declared) - seen)
    if extra:
        raise ValueError(f"stand-in of {source!r} declares patterns {extra} that config/datasets.yaml does not "
                         "expect")
    return out


def restrict_fixed_split(fixed: Mapping[str, Iterable[str]], cases: Iterable[str]) -> dict[str, list[str]]:
    """A fixed split (lists of the real dataset's case ids) cut down to the cases of a stand-in.

    Raises:
        ValueError: a split would keep no case (names it and the stand-in's cases).
    """
    present = set(cases)
    out = {str(k): [str(c) for c in v if str(c) in present] for k, v in fixed.items()}
    empty = sorted(k for k, v in out.items() if not v)
    if empty:
        raise ValueError(f"stand-in data: fixed split(s) {empty} name none of the stand-in's cases "
                         f"{sorted(present)}; the stand-in generator must write cases of every fixed split")
    return out


def _stable(text: str) -> int:
    """A deterministic integer of a string (Python's hash() is salted per process)."""
    return int.from_bytes(text.encode()[:8].ljust(8, b"\0"), "little")


# ------------------------------------------------------------------------------------------ helpers


def _dist2(shape: tuple[int, ...], centre: Iterable[float], radii: Iterable[float]) -> np.ndarray:
    """Squared normalised distance to an axis-aligned ellipsoid's centre (<= 1 inside), float32."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    out = np.zeros(shape, dtype=np.float32)
    for g, c, r in zip(grids, centre, radii):
        out = out + ((g.astype(np.float32) - np.float32(c)) / np.float32(r)) ** 2
    return out


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitude of a signal plus complex Gaussian noise (positive, as MR magnitude images are)."""
    n1 = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    n2 = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sigma)
    return np.hypot(signal.astype(np.float32) + n1, n2)


def _bias(shape: tuple[int, ...], rng: np.random.Generator, strength: float = 0.15) -> np.ndarray:
    """A smooth multiplicative bias field (product of one cosine per axis), float32."""
    field = np.ones(shape, dtype=np.float32)
    for axis, n in enumerate(shape):
        t = np.linspace(0, np.pi, n, dtype=np.float32) * np.float32(rng.uniform(0.5, 1.5))
        prof = 1 + np.float32(strength) * np.cos(t + np.float32(rng.uniform(0, np.pi)))
        field = field * prof.reshape([n if a == axis else 1 for a in range(len(shape))])
    return field


def _as_int16(volume: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(volume), -32768, 32767).astype(np.int16)


def _save_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def _lps_affine(spacing: Iterable[float], origin_lps: Iterable[float]) -> np.ndarray:
    """The NIfTI (RAS) affine of an identity-direction ITK grid (what SimpleITK writes for such an image)."""
    s, o = list(spacing), list(origin_lps)
    return np.array([[-s[0], 0, 0, -o[0]], [0, -s[1], 0, -o[1]], [0, 0, s[2], o[2]], [0, 0, 0, 1]], dtype=np.float64)


def _save_mha(path: Path, data_xyz: np.ndarray, spacing: Iterable[float], origin_lps: Iterable[float]) -> None:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data_xyz, (2, 1, 0))))
    img.SetSpacing([float(s) for s in spacing])
    img.SetOrigin([float(o) for o in origin_lps])
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path), True)


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


# ------------------------------------------------------------------------------------------ MSD spleen


@_register("msd_spleen")
def msd_spleen(folder: Path, rng: np.random.Generator) -> dict[str, int]:
    """Task09_Spleen: portal-venous CT, int16 HU, 512 x 512 x 31-40 (the low end of the real 31-168 slices),
    in-plane 0.6-0.9 mm, 5 mm slices; labels uint8 0 / 1 (spleen); dataset.json as the MSD release."""
    train, test = [2, 3, 6, 8, 9], [1, 7]
    entries = []
    for i in train + test:
        nz = int(rng.integers(31, 41))
        shape = (512, 512, nz)
        sxy, sz = float(rng.uniform(0.6, 0.9)), 5.0
        # stored LPS-like (x, y flipped), as CT NIfTIs converted from DICOM usually are
        affine = np.array([[-sxy, 0, 0, 512 * sxy / 2], [0, -sxy, 0, 512 * sxy / 2 - 20], [0, 0, sz, -sz * nz],
                           [0, 0, 0, 1]])
        body = _dist2(shape, (256 + rng.uniform(-10, 10), 262, nz / 2), (230, 170, 10 * nz)) <= 1
        fat = body & (_dist2(shape, (256, 262, nz / 2), (215, 155, 10 * nz)) > 1)
        # x grows toward the patient's left in this LPS-stored grid: the spleen sits at high x, posterior
        spleen = _dist2(shape, (360 + rng.uniform(-15, 15), 300 + rng.uniform(-10, 10), nz / 2 + rng.uniform(-2, 2)),
                        (rng.uniform(45, 60), rng.uniform(35, 50), nz * rng.uniform(0.33, 0.4))) <= 1
        spine = _dist2(shape, (256, 360, nz / 2), (22, 22, 10 * nz)) <= 1
        hu = np.full(shape, -1000.0, dtype=np.float32)
        hu[body] = 45.0
        hu[fat] = -100.0
        hu[spine] = 650.0
        hu[spleen] = 110.0
        hu += rng.standard_normal(shape, dtype=np.float32) * np.float32(15.0)
        hu[~body] = -1024.0 + np.abs(rng.standard_normal(int((~body).sum()), dtype=np.float32)) * 8
        image = _as_int16(hu)
        _save_nifti(folder / ("imagesTr" if i in train else "imagesTs") / f"spleen_{i}.nii.gz", image, affine)
        if i in train:
            _save_nifti(folder / "labelsTr" / f"spleen_{i}.nii.gz", spleen.astype(np.uint8), affine)
            entries.append({"image": f"./imagesTr/spleen_{i}.nii.gz", "label": f"./labelsTr/spleen_{i}.nii.gz"})
    meta = {
        "name": "Spleen", "description": "Spleen Segmentation", "reference": "Memorial Sloan Kettering Cancer Center",
        "licence": "CC-BY-SA 4.0", "release": "1.0 06/08/2018", "tensorImageSize": "3D",
        "modality": {"0": "CT"}, "labels": {"0": "background", "1": "spleen"},
        "numTraining": len(train), "numTest": len(test), "training": entries,
        "test": [f"./imagesTs/spleen_{i}.nii.gz" for i in test],
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=4) + "\n")
    return {"imagesTr/*.nii.gz": len(train), "labelsTr/*.nii.gz": len(train), "imagesTs/*.nii.gz": len(test)}


# ------------------------------------------------------------------------------------------ BUSI


#: per class, image numbers that P-CD's fixed splits (config/experiments/pcd.yaml) put in train, val
#: (pcd_busi_honest) and test; benign (2) has a second lesion mask, as BUSI's multifocal cases do
_BUSI_CASES = {"benign": [1, 2, 13, 19], "malignant": [1, 2, 8], "normal": [1, 3, 6]}


@_register("busi")
def busi(folder: Path, rng: np.random.Generator) -> dict[str, int]:
    """BUSI: RGB uint8 PNG ultrasound images of variable size (~450-580 x 500-640) with a grey uint8 mask
    ``_mask.png`` (0 / 255; all 0 for normal), one extra ``_mask_1.png`` for a multifocal benign case."""
    from PIL import Image

    counts: dict[str, int] = {}
    for category, numbers in _BUSI_CASES.items():
        (folder / category).mkdir(parents=True, exist_ok=True)
        for n in numbers:
            h, w = int(rng.integers(450, 581)), int(rng.integers(500, 641))
            rows = np.arange(h, dtype=np.float32)[:, None]
            # dark gel/skin band at the top, tissue below with depth attenuation, Rayleigh speckle
            tissue = np.where(rows < h * 0.08, 15.0, 110.0 * np.exp(-rows / (1.6 * h))).astype(np.float32)
            tissue = np.broadcast_to(tissue, (h, w)) * _bias((h, w), rng, 0.2)
            lesions = []
            if category != "normal":
                for k in range(2 if (category, n) == ("benign", 2) else 1):
                    centre = (rng.uniform(0.35, 0.65) * h, rng.uniform(0.3, 0.7) * w)
                    radii = (rng.uniform(0.08, 0.18) * h, rng.uniform(0.1, 0.2) * w) if k == 0 else \
                        (0.05 * h, 0.05 * w)
                    if k == 1:
                        centre = (centre[0], (centre[1] + 0.35 * w) % (0.8 * w) + 0.1 * w)
                    lesions.append(_dist2((h, w), centre, radii) <= 1)
            signal = tissue.copy()
            for m in lesions:
                signal[m] = 20.0 if category == "malignant" else 35.0
            speckle = rng.rayleigh(1.0, size=(h, w)).astype(np.float32) / np.float32(1.2533)
            grey = np.clip(signal * speckle, 0, 255).astype(np.uint8)
            stem = f"{category} ({n})"
            Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB").save(folder / category / f"{stem}.png")
            masks = lesions or [np.zeros((h, w), dtype=bool)]
            Image.fromarray(masks[0].astype(np.uint8) * 255, "L").save(folder / category / f"{stem}_mask.png")
            for k, m in enumerate(masks[1:], start=1):
                Image.fromarray(m.astype(np.uint8) * 255, "L").save(folder / category / f"{stem}_mask_{k}.png")
        counts[f"{category}/{category} (*).png"] = len(numbers)
        counts[f"{category}/{category} (*)_mask.png"] = len(numbers)
    return counts


# ------------------------------------------------------------------------------------------ PI-CAI


#: (patient, study, ISUP grade of the lesion or None: no human-expert label file, skipped by the converter)
_PICAI_STUDIES = [(10000, 1000000, 3), (10001, 1000001, 2), (10002, 1000002, 4), (10003, 1000003, 2),
                  (10004, 1000004, 5), (10005, 1000005, None)]


@_register("picai")
def picai(folder: Path, rng: np.random.Generator) -> dict[str, int]:
    """PI-CAI: ``images/<patient>/<patient>_<study>_{t2w,adc,hbv,sag,cor}.mha`` (int16; axial T2w 384 x 384 x
    19-24 at 0.5 x 0.5 x 3.0 mm; ADC and high-b DWI on their own coarser 2 x 2 x 3 mm grid of 128 x 120
    (another field of view); sagittal / coronal T2w 384 x 384 x 19), human-expert lesion labels (uint8, ISUP
    grade 2..5) on the T2w grid as NIfTI, and ``labels/clinical_information/marksheet.csv``."""
    label_dir = folder / "labels" / "csPCa_lesion_delineations" / "human_expert" / "resampled"
    marks = []
    n_labels = 0
    for patient, study, isup in _PICAI_STUDIES:
        stem = f"{patient}_{study}"
        out = folder / "images" / str(patient)
        nz = int(rng.integers(19, 25))
        t2_shape, t2_sp = (384, 384, nz), (0.5, 0.5, 3.0)
        t2_origin = (-96.0 + rng.uniform(-5, 5), -96.0 + rng.uniform(-5, 5), -nz * 1.5)
        # world (LPS, mm) centre of the prostate and the lesion, shared by every sequence
        centre = np.array([t2_origin[0] + 96 + rng.uniform(-8, 8), t2_origin[1] + 100, t2_origin[2] + nz * 1.5])
        lesion_c = centre + np.array([rng.uniform(-10, 10), rng.uniform(2, 10), rng.uniform(-4, 4)])

        def tissue(shape, spacing, origin, values, sigma):
            idx_c = (centre - np.asarray(origin)) / np.asarray(spacing)
            idx_l = (lesion_c - np.asarray(origin)) / np.asarray(spacing)
            sp = np.asarray(spacing)
            body = _dist2(shape, idx_c + [0, -20 / sp[1], 0], [150 / sp[0], 110 / sp[1], 400 / sp[2]]) <= 1
            prostate = _dist2(shape, idx_c, [24 / sp[0], 20 / sp[1], 22 / sp[2]]) <= 1
            lesion = _dist2(shape, idx_l, [8 / sp[0], 7 / sp[1], 16 / sp[2]]) <= 1
            sig = np.full(shape, values[0], dtype=np.float32)
            sig[body] = values[1]
            sig[prostate] = values[2]
            if isup is not None:
                sig[lesion & prostate] = values[3]
            return _rician(sig * _bias(shape, rng, 0.1), sigma, rng), lesion & prostate

        t2, lesion = tissue(t2_shape, t2_sp, t2_origin, (5, 300, 420, 180), 15)
        _save_mha(out / f"{stem}_t2w.mha", _as_int16(t2), t2_sp, t2_origin)
        dw_shape, dw_sp = (128, 120, nz), (2.0, 2.0, 3.0)
        dw_origin = (centre[0] - 128.0, centre[1] - 120.0, t2_origin[2])
        adc, _ = tissue(dw_shape, dw_sp, dw_origin, (0, 1900, 1400, 750), 60)
        hbv, _ = tissue(dw_shape, dw_sp, dw_origin, (1, 8, 12, 30), 1.5)
        _save_mha(out / f"{stem}_adc.mha", _as_int16(adc), dw_sp, dw_origin)
        _save_mha(out / f"{stem}_hbv.mha", _as_int16(hbv), dw_sp, dw_origin)
        for view in ("sag", "cor"):  # read by no converter; written because the release holds them
            other, _ = tissue((384, 384, 19), (0.5, 0.5, 3.6), t2_origin, (5, 300, 420, 180), 15)
            _save_mha(out / f"{stem}_{view}.mha", _as_int16(other), (0.5, 0.5, 3.6), t2_origin)
        if isup is not None:
            _save_nifti(label_dir / f"{stem}.nii.gz", (lesion.astype(np.uint8) * isup), _lps_affine(t2_sp, t2_origin))
            n_labels += 1
        marks.append([patient, study, f"2019-0{1 + study % 9}-1{study % 10}", int(rng.integers(55, 76)),
                      round(float(rng.uniform(4, 15)), 1), round(float(rng.uniform(0.08, 0.3)), 2),
                      int(rng.integers(30, 70)), "SYSTEMATIC+MRbiopsy" if isup else "",
                      f"{3 + (isup or 2) // 3}+{3 + (isup or 2) // 4}" if isup else "", isup or "",
                      isup or 0, "YES" if isup and isup >= 2 else "NO", "RUMC"])
    _write_csv(folder / "labels" / "clinical_information" / "marksheet.csv",
               ["patient_id", "study_id", "mri_date", "patient_age", "psa", "psad", "prostate_volume",
                "histopath_type", "lesion_GS", "lesion_ISUP", "case_ISUP", "case_csPCa", "center"], marks)
    n = len(_PICAI_STUDIES)
    return {"images/*/*_t2w.mha": n, "images/*/*_adc.mha": n, "images/*/*_hbv.mha": n,
            "labels/csPCa_lesion_delineations/human_expert/resampled/*.nii.gz": n_labels}


# ------------------------------------------------------------------------------------------ ACDC


#: training patients named by both KD-MRI ACDC splits (train 001/003, honest val 002/004) and testing ones
_ACDC_PATIENTS = {"training": [1, 2, 3, 4], "testing": [101, 102]}
_ACDC_GROUPS = ["NOR", "MINF", "DCM", "HCM", "RV"]


@_register("acdc")
def acdc(folder: Path, rng: np.random.Generator) -> dict[str, int]:
    """ACDC: ``<subset>/patientNNN/`` with Info.cfg, the 4-D cine ``patientNNN_4d.nii.gz`` (12-16 frames) and
    its ED / ES frames ``patientNNN_frameFF.nii.gz`` with ``_gt`` labels (uint8: 0, 1 RV, 2 MYO, 3 LV);
    int16 magnitudes, in-plane 216-256 x 216-256 at 1.37-1.56 mm, 8-10 short-axis slices of 10 mm."""
    counts = {"training": 0, "testing": 0}
    for subset, patients in _ACDC_PATIENTS.items():
        for p in patients:
            name = f"patient{p:03d}"
            out = folder / subset / name
            out.mkdir(parents=True, exist_ok=True)
            nx, ny = [(216, 256), (232, 256), (256, 216), (256, 256)][int(rng.integers(4))]
            nz, n_frames = int(rng.integers(8, 11)), int(rng.integers(12, 17))
            sxy = float(rng.choice([1.367, 1.4844, 1.5625]))
            affine = np.diag([sxy, sxy, 10.0, 1.0])
            es = int(rng.integers(int(n_frames * 0.3), int(n_frames * 0.45) + 1))
            shape = (nx, ny, nz)
            cx, cy = nx / 2 + rng.uniform(-10, 10), ny / 2 + rng.uniform(-10, 10)
            # the heart tapers toward the apex (high z)
            z = np.arange(nz, dtype=np.float32)
            taper = (1.0 - 0.5 * z / max(nz - 1, 1)).reshape(1, 1, nz)
            chest = _dist2(shape, (nx / 2, ny / 2, nz / 2), (nx * 0.45, ny * 0.36, 10 * nz)) <= 1
            lungs = (_dist2(shape, (nx * 0.3, ny / 2, nz / 2), (nx * 0.12, ny * 0.22, 10 * nz)) <= 1) | \
                    (_dist2(shape, (nx * 0.72, ny / 2, nz / 2), (nx * 0.12, ny * 0.22, 10 * nz)) <= 1)
            frames, labels = [], {}
            for t in range(1, n_frames + 1):
                # contraction 0 at ED (frame 1) to 1 at ES, back to 0
                phase = float(np.sin(np.pi * min((t - 1) / max(es - 1, 1), 1.0) / 2)) if t <= es else \
                    float(np.cos(np.pi / 2 * (t - es) / max(n_frames - es, 1)))
                r_lv = (22 - 8 * phase) / sxy
                r_epi = r_lv + (9 + 3 * phase) / sxy
                d_lv = _dist2((nx, ny, 1), (cx, cy, 0), (r_lv, r_lv, 1)) / taper ** 2
                d_epi = _dist2((nx, ny, 1), (cx, cy, 0), (r_epi, r_epi * 1.05, 1)) / taper ** 2
                d_rv = _dist2((nx, ny, 1), (cx - r_epi * 1.1, cy, 0), ((20 - 6 * phase) / sxy, r_epi * 1.2, 1)) \
                    / taper ** 2
                label = np.zeros(shape, dtype=np.uint8)
                label[(d_rv <= 1) & (d_epi > 1)] = 1
                label[(d_epi <= 1)] = 2
                label[(d_lv <= 1)] = 3
                label[:, :, nz - 1:] = 0  # beyond the apex
                sig = np.full(shape, 5.0, dtype=np.float32)
                sig[chest] = 90.0
                sig[lungs & chest] = 15.0
                sig[label == 2] = 70.0
                sig[(label == 1) | (label == 3)] = 260.0
                frames.append(_as_int16(_rician(sig * _bias(shape, rng, 0.2), 8.0, rng)))
                labels[t] = label
            _save_nifti(out / f"{name}_4d.nii.gz", np.stack(frames, axis=3), affine)
            for t in (1, es):
                _save_nifti(out / f"{name}_frame{t:02d}.nii.gz", frames[t - 1], affine)
                _save_nifti(out / f"{name}_frame{t:02d}_gt.nii.gz", labels[t], affine)
            group = _ACDC_GROUPS[p % len(_ACDC_GROUPS)]
            (out / "Info.cfg").write_text(
                f"ED: 1\nES: {es}\nGroup: {group}\nHeight: {rng.uniform(155, 190):.1f}\n"
                f"NbFrame: {n_frames}\nWeight: {rng.uniform(55, 100):.1f}\n")
            counts[subset] += 1
    n = counts["training"]
    return {"training/patient*/Info.cfg": n, "training/patient*/patient*_frame??.nii.gz": 2 * n,
            "training/patient*/patient*_frame??_gt.nii.gz": 2 * n, "testing/patient*/Info.cfg": counts["testing"]}


# ------------------------------------------------------------------------------------------ brains


def _brain(shape: tuple[int, int, int], spacing: Iterable[float], rng: np.random.Generator,
           centre_mm: Iterable[float] | None = None) -> dict[str, np.ndarray]:
    """Tissue masks of an ellipsoidal brain (mm-based radii): brain, csf (ventricles + rim), wm, gm."""
    sp = np.asarray(list(spacing), dtype=np.float32)
    c = (np.asarray(list(centre_mm)) / sp) if centre_mm is not None else np.asarray(shape) / 2
    c = c + rng.uniform(-3, 3, size=3) / sp
    radii = np.array([68.0, 84.0, 62.0]) * rng.uniform(0.95, 1.05, size=3)
    d = _dist2(shape, c, radii / sp)
    brain = d <= 1
    wm = d <= 0.55
    vent = _dist2(shape, c + np.array([0, -5, 8]) / sp, np.array([14.0, 24.0, 12.0]) / sp) <= 1
    rim = brain & (d > 0.9)
    return {"brain": brain, "csf": vent | rim, "wm": wm & ~vent, "gm": brain & ~wm & ~rim}


@_register("brats")
def brats(folder: Path, rng: np.random.Generator) -> dict[str, int]:
    """BraTS 2021: ``BraTS2021_NNNNN/BraTS2021_NNNNN_{flair,t1,t1ce,t2,seg}.nii.gz``, skull-stripped 240 x 240
    x 155 at 1 mm (the real fixed grid), int16 images (0 outside the brain), seg uint8 0 / 1 NCR / 2 ED / 4 ET."""
    cases = [0, 2, 3, 5, 6]
    shape = (240, 240, 155)
    affine = np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, 239], [0, 0, 1.0, 0], [0, 0, 0, 1]])
    contrast = {  # csf, gm, wm, oedema, necrosis, enhancing
        "flair": (150, 420, 340, 800, 300, 650), "t1": (250, 500, 650, 380, 200, 420),
        "t1ce": (250, 480, 600, 380, 150, 1300), "t2": (1500, 700, 500, 1300, 1600, 900),
    }
    for i in cases:
        name = f"BraTS2021_{i:05d}"
        t = _brain(shape, (1, 1, 1), rng, centre_mm=(120, 120, 75))
        tc = np.array([rng.uniform(85, 155), rng.uniform(80, 160), rng.uniform(60, 90)])
        d_ed = _dist2(shape, tc, np.array([30, 34, 36]) * rng.uniform(0.9, 1.1, 3))
        d_core = _dist2(shape, tc, np.array([14, 16, 15]) * rng.uniform(0.9, 1.1, 3))
        seg = np.zeros(shape, dtype=np.uint8)
        seg[(d_ed <= 1) & t["brain"]] = 2
        seg[(d_core <= 1) & t["brain"]] = 4
        seg[(d_core <= 0.45) & t["brain"]] = 1
        for mod, (csf, gm, wm, ed, ncr, et) in contrast.items():
            sig = np.zeros(shape, dtype=np.float32)
            sig[t["gm"]], sig[t["wm"]], sig[t["csf"]] = gm, wm, csf
            sig[seg == 2], sig[seg == 1], sig[seg == 4] = ed, ncr, et
            vol = _rician(sig * _bias(shape, rng, 0.1), 0.04 * wm, rng)
            vol[~t["brain"]] = 0
            _save_nifti(folder / name / f"{name}_{mod}.nii.gz", _as_int16(vol), affine)
        _save_nifti(folder / name / f"{name}_seg.nii.gz", seg, affine)
    n = len(cases)
    return {f"BraTS2021_*/BraTS2021_*_{m}.nii.gz": n for m in ("flair", "t1", "t1ce", "t2", "seg")}


_MRBRAINS_SUBJECTS = {"TrainingData": [1, 2, 3, 4, 5], "TestData": [1, 2]}


@_register("mrbrains")
def mrbrains(folder: Path, rng: np.random.Generator) -> dict[str, int]:
    """MRBrainS13: ``{TrainingData,TestData}/<n>/`` with T1, T1_IR, T2_FLAIR (240 x 240 x 48, the real fixed
    grid, 0.958 x 0.958 x 3.0 mm) and T1_1mm (240 x 240 x 144 at 0.958 x 0.958 x 1.0 mm), uncompressed
    ``.nii`` int16; training subjects with LabelsForTesting (0 / 1 CSF / 2 GM / 3 WM) and LabelsForTraining
    (0..8) as uint8."""
    sp = (0.958, 0.958, 3.0)
    shape = (240, 240, 48)
    contrast = {"T1": (300, 650, 900), "T1_IR": (100, 900, 1300), "T2_FLAIR": (150, 500, 380)}  # csf, gm, wm
    for subset, subjects in _MRBRAINS_SUBJECTS.items():
        for s in subjects:
            out = folder / subset / str(s)
            t = _brain(shape, sp, rng, centre_mm=(115, 115, 72))
            for mod, (csf, gm, wm) in contrast.items():
                sig = np.full(shape, 3.0, dtype=np.float32)
                sig[t["gm"]], sig[t["wm"]], sig[t["csf"]] = gm, wm, csf
                _save_nifti(out / f"{mod}.nii", _as_int16(_rician(sig * _bias(shape, rng), 0.03 * wm, rng)),
                            np.diag([*sp, 1.0]))
            hi_shape, hi_sp = (240, 240, 144), (0.958, 0.958, 1.0)
            t1 = _brain(hi_shape, hi_sp, rng, centre_mm=(115, 115, 72))
            sig = np.full(hi_shape, 3.0, dtype=np.float32)
            sig[t1["gm"]], sig[t1["wm"]], sig[t1["csf"]] = 650, 900, 300
            _save_nifti(out / "T1_1mm.nii", _as_int16(_rician(sig, 25, rng)), np.diag([*hi_sp, 1.0]))
            if subset == "TrainingData":
                lab = np.zeros(shape, dtype=np.uint8)
                lab[t["csf"]], lab[t["gm"]], lab[t["wm"]] = 1, 2, 3
                _save_nifti(out / "LabelsForTesting.nii", lab, np.diag([*sp, 1.0]))
                detail = np.zeros(shape, dtype=np.uint8)  # cortical GM 1, WM 3, CSF 5, ventricles 6
                detail[t["gm"]], detail[t["wm"]], detail[t["csf"]] = 1, 3, 5
                detail[t["csf"] & (_dist2(shape, (120, 115, 26), (15, 25, 5)) <= 1)] = 6
                _save_nifti(out / "LabelsForTraining.nii", detail, np.diag([*sp, 1.0]))
    n = len(_MRBRAINS_SUBJECTS["TrainingData"])
    return {f"TrainingData/*/{m}.*": n for m in ("T1", "T1_IR", "T2_FLAIR", "LabelsForTraining")}


_CC359_VOLUMES = ["CC0001_philips_15_55_M", "CC0002_philips_15_56_M", "CC0121_siemens_15_61_M",
                  "CC0241_ge_3_56_F"]


@_register("calgary_campinas")
def calgary_campinas(folder: Path, rng: np.random.Generator) -> dict[str, int]:
    """Calgary-Campinas-359 ``Original/CC<nnnn>_<vendor>_<field>_<age>_<sex>.nii.gz``: T1 with skull, 1 mm
    isotropic, 170-180 sagittal slices (the real range, here 170-174) of 256 x 256, int16."""
    for name in _CC359_VOLUMES:
        n_sag = int(rng.integers(170, 175))
        shape = (n_sag, 256, 256)
        t = _brain(shape, (1, 1, 1), rng, centre_mm=(n_sag / 2, 128, 140))
        head = _dist2(shape, (n_sag / 2, 128, 125), (80, 105, 115)) <= 1
        sig = np.full(shape, 2.0, dtype=np.float32)
        sig[head] = 350.0  # scalp, skull and fat around the brain
        sig[head & ~t["brain"] & (_dist2(shape, (n_sag / 2, 128, 125), (74, 99, 109)) <= 1)] = 60.0  # skull
        sig[t["gm"]], sig[t["wm"]], sig[t["csf"]] = 520, 760, 180
        vol = _rician(sig * _bias(shape, rng), 18, rng)
        _save_nifti(folder / "Original" / f"{name}.nii.gz", _as_int16(vol), np.diag([1.0, 1.0, 1.0, 1.0]))
    return {"Original/CC*.nii.gz": len(_CC359_VOLUMES)}


# ------------------------------------------------------------------------------------------ knee


N_KNEE_COILS = 15


@_register("knee_hammernik")
def knee_hammernik(folder: Path, rng: np.random.Generator) -> dict[str, int]:
    """Knee data of Hammernik et al., ``coronal_pd/<patient>/rawdata<k>.mat`` (``rawdata``: 640 x 368 x 15
    complex64 k-space) and ``espirit<k>.mat`` (``reference``: 640 x 368 complex64 coil-combined image with
    2x read-out oversampling, ``sensitivities``: 640 x 368 x 15 complex64), MATLAB v5 files (read with
    scipy.io.loadmat, as the public loaders do); 3 patients x 4 slices (real: 20 patients, ~40 slices)."""
    import scipy.io

    patients, slices = [1, 2, 3], [1, 2, 3, 4]
    nx, ny, nc = 640, 368, N_KNEE_COILS
    x = (np.arange(nx, dtype=np.float32) - nx / 2)[:, None]
    y = (np.arange(ny, dtype=np.float32) - ny / 2)[None, :]
    angles = np.linspace(0, 2 * np.pi, nc, endpoint=False)
    sens = np.stack([np.exp(-((x - 150 * np.cos(a)) ** 2 + (y - 150 * np.sin(a)) ** 2) / (2 * 140.0 ** 2))
                     * np.exp(1j * (0.004 * x * np.cos(a) + 0.004 * y * np.sin(a) + a)) for a in angles], axis=2)
    sens = (sens / np.sqrt((np.abs(sens) ** 2).sum(axis=2, keepdims=True))).astype(np.complex64)
    for p in patients:
        out = folder / "coronal_pd" / str(p)
        out.mkdir(parents=True, exist_ok=True)
        for k in slices:
            # the anatomy fills the central half of the oversampled read-out (rows): femur and tibia condyles
            # in PD contrast, fluid / cartilage bright, surrounding soft tissue
            leg = _dist2((nx, ny), (nx / 2, ny / 2), (150, 150 - 6 * abs(k - 2.5))) <= 1
            femur = _dist2((nx, ny), (nx / 2 - 75, ny / 2 + rng.uniform(-5, 5)), (70, 95)) <= 1
            tibia = _dist2((nx, ny), (nx / 2 + 80, ny / 2 + rng.uniform(-5, 5)), (65, 90)) <= 1
            gap = _dist2((nx, ny), (nx / 2, ny / 2), (8, 80)) <= 1
            mag = np.zeros((nx, ny), dtype=np.float32)
            mag[leg] = 0.45
            mag[femur | tibia] = 0.7
            mag[gap & leg] = 0.95
            mag = mag * _bias((nx, ny), rng, 0.1)
            phase = np.float32(0.3) * x / nx + np.float32(0.2) * y / ny + np.float32(rng.uniform(-np.pi, np.pi))
            noise = (rng.standard_normal((nx, ny), dtype=np.float32)
                     + 1j * rng.standard_normal((nx, ny), dtype=np.float32)) * np.float32(0.01)
            reference = (mag * np.exp(1j * phase) + noise).astype(np.complex64)
            coils = reference[:, :, None] * sens
            kspace = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(coils, axes=(0, 1)), axes=(0, 1), norm="ortho"),
                                     axes=(0, 1)).astype(np.complex64)
            scipy.io.savemat(out / f"rawdata{k}.mat", {"rawdata": kspace}, do_compression=False)
            scipy.io.savemat(out / f"espirit{k}.mat", {"reference": reference, "sensitivities": sens},
                             do_compression=False)
    n = len(patients) * len(slices)
    return {"coronal_pd/*/rawdata*.mat": n, "coronal_pd/*/espirit*.mat": n}


# ------------------------------------------------------------------------------------------ HECKTOR


_HECKTOR_IDS = ["CHGJ007", "CHGJ008", "CHMR004", "CHUM001", "CHUS003"]


@_register("hecktor")
def hecktor(folder: Path, rng: np.random.Generator) -> dict[str, int]:
    """HECKTOR 2021: ``hecktor_nii/<ID>_{ct,pt,gtvt}.nii.gz`` (CT int16 HU 512 x 512 x 64 at ~0.98 x 0.98 x
    3.0 mm; PET float32 SUV 128 x 128 x 58 at 4.0 x 4.0 x 3.27 mm; GTVt uint8 0 / 1 on the CT grid), the
    144 mm bounding boxes (LPS mm) and a clinical CSV."""
    boxes, info = [], []
    for pid in _HECKTOR_IDS:
        ct_shape, ct_sp = (512, 512, 64), (float(rng.uniform(0.95, 1.0)),) * 2 + (3.0,)
        ct_origin = (-ct_sp[0] * 256, -ct_sp[1] * 256 + 30, -300.0)
        pt_shape, pt_sp = (128, 128, 58), (4.0, 4.0, 3.27)
        pt_origin = (-256.0, -226.0, -300.0)
        neck_c = np.array([rng.uniform(-5, 5), 30 + rng.uniform(-5, 5), -205 + rng.uniform(-5, 5)])  # LPS mm
        tumour_c = neck_c + np.array([rng.uniform(-15, 15), rng.uniform(-25, -10), rng.uniform(-8, 8)])
        tumour_r = np.array([rng.uniform(13, 18), rng.uniform(12, 16), 40.0])

        def masks(shape, sp, origin):
            sp, origin = np.asarray(sp), np.asarray(origin)
            to_idx = lambda p: (p - origin) / sp  # noqa: E731
            neck = _dist2(shape, to_idx(neck_c), np.array([75, 65, 1000]) / sp) <= 1
            spine = _dist2(shape, to_idx(neck_c + [0, 25, 0]), np.array([12, 12, 1000]) / sp) <= 1
            airway = _dist2(shape, to_idx(neck_c + [0, -20, 0]), np.array([8, 6, 1000]) / sp) <= 1
            tumour = _dist2(shape, to_idx(tumour_c), tumour_r / sp) <= 1
            return neck, spine, airway & ~tumour, tumour & neck

        neck, spine, airway, tumour = masks(ct_shape, ct_sp, ct_origin)
        hu = np.full(ct_shape, -1000.0, dtype=np.float32)
        hu[neck], hu[spine], hu[airway], hu[tumour] = 40.0, 700.0, -950.0, 65.0
        hu += rng.standard_normal(ct_shape, dtype=np.float32) * np.float32(12.0)
        ct_affine = _lps_affine(ct_sp, ct_origin)
        _save_nifti(folder / "hecktor_nii" / f"{pid}_ct.nii.gz", _as_int16(hu), ct_affine)
        _save_nifti(folder / "hecktor_nii" / f"{pid}_gtvt.nii.gz", tumour.astype(np.uint8), ct_affine)
        neck, spine, airway, tumour = masks(pt_shape, pt_sp, pt_origin)
        suv = np.full(pt_shape, 0.02, dtype=np.float32)
        suv[neck], suv[spine], suv[airway], suv[tumour] = 1.0, 1.6, 0.1, float(rng.uniform(8, 15))
        suv *= rng.gamma(20.0, 1 / 20.0, size=pt_shape).astype(np.float32)
        _save_nifti(folder / "hecktor_nii" / f"{pid}_pt.nii.gz", suv.astype(np.float32),
                    _lps_affine(pt_sp, pt_origin))
        lo = np.round(neck_c - 72.0 + rng.uniform(-5, 5, size=3), 2)
        boxes.append([pid, *lo.tolist(), *(lo + 144.0).tolist()])
        info.append([pid, pid[:4], int(rng.integers(0, 2)), int(rng.integers(45, 80)), "", "", "", "", "", 0,
                     1, 0, int(rng.integers(300, 2500))])
    _write_csv(folder / "hecktor2021_bbox_training.csv", ["PatientID", "x1", "y1", "z1", "x2", "y2", "z2"], boxes)
    _write_csv(folder / "hecktor2021_patient_info_training.csv",
               ["PatientID", "CenterID", "Gender", "Age", "Weight", "Tobacco", "Alcohol", "Performance status",
                "HPV status", "Surgery", "Chemotherapy", "Progression", "Progression free survival"], info)
    n = len(_HECKTOR_IDS)
    return {"hecktor_nii/*_ct.nii.gz": n, "hecktor_nii/*_pt.nii.gz": n, "hecktor_nii/*_gtvt.nii.gz": n}


# ------------------------------------------------------------------------------------------ KD-MRI's masks

KDMRI_MASKS: dict[str, dict] = {
    # organ: mask shape, line axis, dtype, sampled lines per acceleration (the counts of the shipped masks,
    # docs/sources.md 3.1); KD-MRI's masks are un-centred with 10 centre lines around DC
    "cardiac": {"shape": (150, 150), "axis": 0, "dtype": "float64", "lines": {4: 37, 5: 30, 8: 18}},
    "mrbrain": {"shape": (240, 240), "axis": 0, "dtype": "float64", "lines": {4: 60, 5: 48, 8: 30}},
    "knee": {"shape": (640, 368), "axis": 1, "dtype": "float32", "lines": {4: 94, 5: 74, 8: 50}},
}
"""The line masks KD-MRI ships (``us_masks/<organ>/mask_<acc>x.npy``), which the paper config reads from
``data/kdmri_masks/`` (placed by hand, not redistributed): shape, line axis, dtype and number of sampled lines."""

KDMRI_CENTRE_LINES = 10


def kdmri_mask(organ: str, acceleration: int, seed: int = DEFAULT_SEED) -> np.ndarray:
    """A stand-in of KD-MRI's shipped mask of ``organ`` at ``acceleration``: same shape, dtype, line axis and
    number of sampled lines, un-centred (the 10 centre lines are indices 0-4 and n-5..n-1), the other lines
    drawn uniformly without replacement (seeded).

    Raises:
        ValueError: an organ or acceleration KD-MRI ships no mask for.
    """
    if organ not in KDMRI_MASKS or int(acceleration) not in KDMRI_MASKS[organ]["lines"]:
        raise ValueError(f"KD-MRI ships no mask for {organ!r} at {acceleration}x; it ships "
                         f"{ {o: sorted(m['lines']) for o, m in KDMRI_MASKS.items()} }")
    info = KDMRI_MASKS[organ]
    n = info["shape"][info["axis"]]
    half = KDMRI_CENTRE_LINES // 2
    centre = np.r_[0:half, n - half:n]
    rest = np.setdiff1d(np.arange(n), centre)
    rng = np.random.default_rng([int(seed), _stable(f"{organ}:{acceleration}")])
    picked = rng.choice(rest, size=info["lines"][int(acceleration)] - len(centre), replace=False)
    lines = np.zeros(n, dtype=bool)
    lines[np.r_[centre, picked]] = True
    mask = np.zeros(info["shape"], dtype=info["dtype"])
    if info["axis"] == 0:
        mask[lines, :] = 1
    else:
        mask[:, lines] = 1
    return mask
