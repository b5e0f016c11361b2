"""BUSI breast ultrasound PNG folders (format ``busi_png``).

Layout: ``src_dir/{benign,malignant,normal}/<class> (<n>).png`` with ``<class> (<n>)_mask.png`` (and, for
multifocal lesions, ``_mask_1.png``, ``_mask_2.png``). The images carry no geometry.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkd.data.convert import (
    CaseLoader,
    SliceOptions,
    natural_key,
    require_dir,
    slice_options,
    volumes_to_case,
    write_converted,
)
from medkd.data.formats import FORMATS, Format
from medkd.data.geometry import resize_nearest
from medkd.data.store import SliceCase

BUSI_LABELS = {"0": "background", "1": "lesion"}
BUSI_CLASSES = ("benign", "malignant", "normal")
INTERPOLATIONS = ("nearest", "linear")

_BUSI_NAME = re.compile(r"^(benign|malignant|normal) \((\d+)\)\.png$")


def busi_case_id(relative: str) -> str:
    """``"benign/benign (406).png"`` (a P-CD split entry or a file path) -> ``"benign_406"``.

    Raises:
        ValueError: not a BUSI image name.
    """
    name = Path(relative).name
    m = _BUSI_NAME.match(name)
    if not m:
        raise ValueError(f"{relative!r} is not a BUSI image name '<class> (<n>).png'")
    return f"{m.group(1)}_{m.group(2)}"


def glob_escape(text: str) -> str:
    """Escape glob metacharacters (BUSI names contain parentheses only, but be safe)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def _read_png(path: Path, mode: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert(mode))
    except (OSError, UnidentifiedImageError) as exc:
        raise ValueError(f"{path}: cannot read PNG ({exc})") from exc


def convert_busi(src_dir: str | Path, out_path: str | Path, *, interpolation: str = "nearest",
                 extra_masks: str = "ignore", mask_threshold: int = 255, spacing_mm: Sequence[float] = (1.0, 1.0),
                 dataset: str | None = None, **slicing: Any) -> None:
    """BUSI -> slice store, one case (of one slice) per image (layout in the module docstring).

    As P-CD's loader does, the image is converted to RGB (3 channels ``R``, ``G``, ``B``; grey PNGs are
    replicated) and the label is channel 0 of the mask converted to RGB, foreground where it is
    ``>= mask_threshold`` (P-CD divides by 255 and truncates to an integer: only 255 counts, the default).
    Case ids ``<class>_<n>`` (``benign_406``; P-CD's split entries map to them with :func:`busi_case_id`); the
    attribute ``category`` keeps the folder.

    With ``interpolation="nearest"`` (P-CD: torchvision ``Resize(224, NEAREST)`` applied to the uint8 tensor)
    image and mask are resized by :func:`medkd.data.geometry.resize_nearest` *before* normalisation,
    reproducing P-CD's pixels exactly; ``"linear"`` resizes the normalised image like every other converter.
    Use ``normalise: window`` with ``window: [0, 255]`` for P-CD's ``/ 255``. Identity orientation, rows =
    image rows, ``spacing_mm`` (row, column; default 1) scaled to the resized grid, slice 1 mm.

    Args:
        src_dir: the dataset folder.
        out_path: the slice store to write.
        interpolation: ``nearest`` (P-CD) or ``linear``.
        extra_masks: ``ignore`` (P-CD uses ``_mask.png`` only) or ``union`` (add ``_mask_<k>.png``).
        mask_threshold: foreground threshold on mask channel 0 (1..255).
        spacing_mm: pixel size (row, column) of the source images.
        dataset: store name.
        **slicing: :func:`medkd.data.convert.slice_options` (``axis`` and ``min_foreground`` are meaningless
            for 2-D images and must keep their defaults 2 and 0).

    Raises:
        FileNotFoundError: a class folder or an image's ``_mask.png`` is missing (names it).
        ValueError: bad options, a file name that is not BUSI's, an unreadable PNG, a mask of another size.
    """
    src = Path(src_dir)
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}")
    if extra_masks not in ("ignore", "union"):
        raise ValueError(f"extra_masks must be 'ignore' or 'union', got {extra_masks!r}")
    if not 1 <= int(mask_threshold) <= 255:
        raise ValueError(f"mask_threshold must lie in 1..255, got {mask_threshold}")
    if len(spacing_mm) != 2 or min(float(s) for s in spacing_mm) <= 0:
        raise ValueError(f"spacing_mm must be two positive numbers (row, column), got {list(spacing_mm)}")
    opts = slice_options(channel_names=["R", "G", "B"], **slicing)
    if opts.axis != 2 or opts.min_foreground != 0.0:
        raise ValueError("busi_png images are single slices: keep axis 2 and min_foreground 0")
    jobs: list[tuple[str, CaseLoader]] = []
    for category in BUSI_CLASSES:
        folder = require_dir(src / category, f"BUSI class folder {category!r}")
        images = [p for p in folder.iterdir() if p.suffix.lower() == ".png" and "_mask" not in p.name]
        for image_path in sorted(images, key=lambda p: natural_key(p.name)):
            cid = busi_case_id(image_path.name)
            jobs.append((cid, _busi_loader(cid, image_path, category, interpolation, extra_masks,
                                           int(mask_threshold), spacing_mm, opts)))
    write_converted(out_path, jobs, converter=convert_busi, src_dir=src,
                    options={**opts.as_dict(), "interpolation": interpolation, "extra_masks": extra_masks,
                             "mask_threshold": int(mask_threshold), "spacing_mm": [float(s) for s in spacing_mm]},
                    channel_names=["R", "G", "B"], label_names=BUSI_LABELS, dataset=dataset)


def _busi_loader(cid: str, image_path: Path, category: str, interpolation: str, extra_masks: str, threshold: int,
                 spacing_mm: Sequence[float], opts: SliceOptions) -> CaseLoader:
    def load() -> SliceCase | None:
        rgb = _read_png(image_path, "RGB")  # (H, W, 3) uint8
        mask_path = image_path.with_name(image_path.stem + "_mask.png")
        if not mask_path.is_file():
            raise FileNotFoundError(f"{mask_path}: mask of {image_path} not found")
        mask_paths = [mask_path]
        if extra_masks == "union":
            mask_paths += sorted(image_path.parent.glob(f"{glob_escape(image_path.stem)}_mask_*.png"))
        label = np.zeros(rgb.shape[:2], dtype=bool)
        for p in mask_paths:
            m = _read_png(p, "RGB")[..., 0]
            if m.shape != rgb.shape[:2]:
                raise ValueError(f"{p}: mask size {m.shape} differs from its image {rgb.shape[:2]} ({image_path})")
            label |= m >= threshold
        h, w = rgb.shape[:2]
        if interpolation == "nearest":
            rgb = resize_nearest(rgb, opts.size)
            label = resize_nearest(label, opts.size)
        channels = {name: rgb[..., i].astype(np.float32)[:, :, None] for i, name in enumerate(("R", "G", "B"))}
        affine = np.diag([float(spacing_mm[0]) * h / channels["R"].shape[0],
                          float(spacing_mm[1]) * w / channels["R"].shape[1], 1.0, 1.0])
        case = volumes_to_case(cid, channels, affine, label.astype(np.uint8)[:, :, None], opts,
                               {"image": str(image_path), "label": ";".join(str(p) for p in mask_paths)},
                               {"category": category, "source_size": np.asarray([h, w], dtype=np.int64)})
        if case is not None:
            case.attrs["original_shape"] = np.asarray([h, w, 1], dtype=np.int64)
        return case
    return load


@FORMATS.register("busi_png")
class BusiPng(Format):
    """BUSI PNG class folders with _mask.png labels."""

    layout = ("*/*_mask.png",)

    summary = "BUSI PNG folders"
    options = {
        "interpolation": {"description": "nearest (P-CD's torchvision Resize NEAREST, before /255) or linear",
                          "enum": list(INTERPOLATIONS)},
        "extra_masks": {"description": "ignore the _mask_<k>.png of multifocal lesions (P-CD) or take their union",
                        "enum": ["ignore", "union"]},
        "mask_threshold": {"description": "mask channel 0 >= this is foreground (255 = P-CD's mask/255 cast to long)",
                           "type": "integer", "minimum": 1, "maximum": 255},
        "spacing_mm": {"description": "[row, col] pixel size, absent from the PNGs", "type": "array",
                       "items": {"type": "number", "exclusiveMinimum": 0}, "minItems": 2, "maxItems": 2},
    }
    convert = staticmethod(convert_busi)
