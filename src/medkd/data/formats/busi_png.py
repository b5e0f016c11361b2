"""BUSI breast ultrasound PNG folders (format ``busi_png``).

Layout: ``src_dir/{benign,malignant,normal}/<class> (<n>).png`` with ``<class> (<n>)_mask.png`` (and, for
multifocal lesions, ``_mask_1.png``, ``_mask_2.png``). The images carry no geometry.

What P-CD's ``PIL convert("RGB")`` can mean decides what is refused: an 8-bit RGB image is read as is; a grey,
palette or fully opaque alpha PNG converts to the same pixels P-CD sees, so it is converted with a warning
recorded in ``source_warnings``; a 16-bit PNG (``/ 255`` is meaningless) or one with transparent pixels is
refused. An image without its mask, a mask without its image and a mask with values other than 0 and 255
(with the default ``mask_threshold: 255``) are refused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medkd.data.convert import (
    CaseLoader,
    MissingCaseFile,
    SliceOptions,
    check_label_values,
    label_values,
    natural_key,
    refuse_orphans,
    require_dir,
    slice_options,
    volumes_to_case,
    warn_source,
    write_converted,
)
from medkd.data.formats import FORMATS, Format
from medkd.data.geometry import resize_nearest
from medkd.data.store import SliceCase
from medkd.errors import InputError

BUSI_LABELS = {"0": "background", "1": "lesion"}
BUSI_CLASSES = ("benign", "malignant", "normal")
INTERPOLATIONS = ("nearest", "linear")

_BUSI_NAME = re.compile(r"^(benign|malignant|normal) \((\d+)\)\.png$")
_BUSI_MASK = re.compile(r"^((?:benign|malignant|normal) \(\d+\))_mask(_\d+)?\.png$")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey + alpha", 6: "RGBA"}
"""PNG IHDR colour type -> name."""


def busi_case_id(relative: str) -> str:
    """``"benign/benign (406).png"`` (a P-CD split entry or a file path) -> ``"benign_406"``.

    Raises:
        InputError: not a BUSI image name.
    """
    name = Path(relative).name
    m = _BUSI_NAME.match(name)
    if not m:
        raise InputError(f"{relative!r} is not a BUSI image name '<class> (<n>).png'")
    return f"{m.group(1)}_{m.group(2)}"


def glob_escape(text: str) -> str:
    """Escape glob metacharacters (BUSI names contain parentheses only, but be safe)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def png_header(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) of a PNG, from its IHDR chunk (PIL reads a 16-bit RGB PNG as 8-bit "RGB").

    Raises:
        InputError: not a PNG file.
    """
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise InputError(f"{path}: not a PNG file (no PNG signature and IHDR header)")
    return head[24], head[25]


def _read_rgb(path: Path) -> tuple[np.ndarray, int]:
    """``PIL convert("RGB")`` of a PNG as (H, W, 3) uint8 and the number of transparent pixels (alpha < 255)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            transparent = 0
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                transparent = int((np.asarray(img.convert("RGBA"))[..., 3] < 255).sum())
            return np.asarray(img.convert("RGB")), transparent
    except (OSError, UnidentifiedImageError) as exc:
        raise InputError(f"{path}: cannot read PNG ({exc})") from exc


def read_busi_image(path: Path, warnings: list[str]) -> np.ndarray:
    """A BUSI image as P-CD's loader reads it (``convert("RGB")``), (H, W, 3) uint8.

    8-bit RGB is read as is. Grey, palette (any bit depth up to 8) and fully opaque alpha PNGs convert to RGB
    without loss: converted, with a warning appended to ``warnings``.

    Raises:
        InputError: a 16-bit PNG (P-CD divides 8-bit values by 255), transparent pixels (``convert("RGB")``
            would keep whatever colour lies under them), not a PNG, unreadable.
    """
    depth, colour = png_header(path)
    kind = f"{depth}-bit {PNG_COLOUR_TYPES.get(colour, f'colour type {colour}')} PNG"
    if depth == 16:
        raise InputError(f"{path}: {kind}; P-CD's loader reads 8-bit values and divides them by 255, a 16-bit "
                         "image cannot be read that way: save it as 8-bit")
    rgb, transparent = _read_rgb(path)
    if transparent:
        raise InputError(f"{path}: {kind} with {transparent} transparent pixel(s); convert('RGB') would keep the "
                         "colours under them: flatten the image onto its background first")
    if (depth, colour) != (8, 2):
        warn_source(warnings, f"{path}: {kind}, not 8-bit RGB; converted to RGB as P-CD's convert('RGB') does")
    return rgb


def read_busi_mask(path: Path, threshold: int, warnings: list[str]) -> np.ndarray:
    """A BUSI mask: (H, W) bool, channel 0 of ``convert("RGB")`` >= ``threshold``.

    With ``threshold`` 255 (P-CD: ``mask / 255`` cast to an integer) a mask must hold 0 and 255 only; with a
    lower, explicitly chosen threshold other values are thresholded, with a warning appended to ``warnings``.

    Raises:
        InputError: a 16-bit PNG, values other than 0 and 255 with ``threshold`` 255 (names the values found),
            not a PNG, unreadable.
    """
    depth, _ = png_header(path)
    if depth == 16:
        raise InputError(f"{path}: 16-bit mask PNG; BUSI masks are 8-bit with values 0 and 255")
    rgb, _ = _read_rgb(path)
    if threshold == 255:
        check_label_values(rgb, path, {0, 255}, listed_in="BUSI's binary mask convention")
    elif label_values(rgb) - {0, 255}:
        warn_source(warnings, f"{path}: mask values {sorted(label_values(rgb))} are not binary; foreground where "
                              f"channel 0 >= {threshold} (mask_threshold)")
    return rgb[..., 0] >= threshold


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
        FileNotFoundError: a class folder is missing.
        MissingCaseFile: an image's ``_mask.png`` is missing (names it).
        InputError: a mask without its image, a file name that is not BUSI's, a 16-bit or transparent PNG, mask
            values other than 0 and 255 (``mask_threshold`` 255), a mask of another size (see the module
            docstring; what is converted with a warning is listed in ``provenance["source_warnings"]``).
        ValueError: bad options, an unreadable PNG.
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
    warnings: list[str] = []
    for category in BUSI_CLASSES:
        folder = require_dir(src / category, f"BUSI class folder {category!r}")
        images, masks = [], []
        for p in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
            if p.name.startswith("."):
                continue
            if not p.is_file() or p.suffix.lower() != ".png":
                warn_source(warnings, f"{p}: not a PNG file; ignored")
            elif "_mask" in p.name:
                masks.append(p)
            else:
                images.append(p)
        for p in masks:
            m = _BUSI_MASK.match(p.name)
            if not m:
                raise InputError(f"{p}: not a BUSI mask name '<class> (<n>)_mask.png' or '..._mask_<k>.png'")
            refuse_orphans([(p, p.with_name(f"{m.group(1)}.png"))], "BUSI mask")
        for image_path in images:
            cid = busi_case_id(image_path.name)
            mask_path = image_path.with_name(image_path.stem + "_mask.png")
            if not mask_path.is_file():
                raise MissingCaseFile(f"{mask_path}: mask of {image_path.name} not found; an image without its mask "
                                      "is refused, not stored unlabelled")
            mask_paths = [mask_path]
            extra = sorted(folder.glob(f"{glob_escape(image_path.stem)}_mask_*.png"), key=lambda p: natural_key(p.name))
            if extra_masks == "union":
                mask_paths += extra
            for p in extra if extra_masks == "ignore" else []:
                warn_source(warnings, f"{p}: extra lesion mask ignored (extra_masks: ignore, as P-CD's loader); its "
                                      f"lesion is background in case {cid}")
            jobs.append((cid, _busi_loader(cid, image_path, mask_paths, category, interpolation, int(mask_threshold),
                                           spacing_mm, opts, warnings)))
    write_converted(out_path, jobs, converter=convert_busi, src_dir=src,
                    options={**opts.as_dict(), "interpolation": interpolation, "extra_masks": extra_masks,
                             "mask_threshold": int(mask_threshold), "spacing_mm": [float(s) for s in spacing_mm]},
                    channel_names=["R", "G", "B"], label_names=BUSI_LABELS, dataset=dataset,
                    provenance_extra={"source_warnings": warnings})


def _busi_loader(cid: str, image_path: Path, mask_paths: list[Path], category: str, interpolation: str,
                 threshold: int, spacing_mm: Sequence[float], opts: SliceOptions, warnings: list[str]) -> CaseLoader:
    def load() -> SliceCase | None:
        rgb = read_busi_image(image_path, warnings)  # (H, W, 3) uint8
        label = np.zeros(rgb.shape[:2], dtype=bool)
        for p in mask_paths:
            m = read_busi_mask(p, threshold, warnings)
            if m.shape != rgb.shape[:2]:
                raise InputError(f"{p}: mask size {m.shape} differs from its image {rgb.shape[:2]} ({image_path})")
            label |= m
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
