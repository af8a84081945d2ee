"""Images: ``.npz`` arrays and pixels (class-per-folder trees are read in ``folders``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import DataError
from .examples import IMAGE, Examples

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def read_npz(path: Path, require_labels: bool = True) -> Examples:
    """``images`` (N,H,W) or (N,H,W,C) uint8, ``labels`` (N,), optional ``classes`` names."""
    try:
        arrays = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read as .npz ({e}). Save it with numpy.savez.") from e
    with arrays:
        if "images" not in arrays.files:
            raise DataError(
                f"{path}: no 'images' array (found: {', '.join(arrays.files)}). Save images as "
                "numpy.savez(path, images=..., labels=..., classes=...)."
            )
        try:
            images = arrays["images"]
            raw_labels = arrays["labels"] if "labels" in arrays.files else None
            classes = [str(c) for c in arrays["classes"]] if "classes" in arrays.files else None
        except (OSError, ValueError) as e:  # e.g. object arrays, which need pickle
            raise DataError(
                f"{path}: cannot read its arrays ({e}). Save plain arrays without Python "
                "objects, e.g. classes=numpy.array(names, dtype=str)."
            ) from e
    images = as_uint8(_checked_images(path, images))
    if raw_labels is None and require_labels:
        raise DataError(f"{path}: no 'labels' array. Add labels=... with one label per image.")
    labels = None
    if raw_labels is not None:
        if raw_labels.ndim != 1:
            raise DataError(f"{path}: 'labels' has shape {raw_labels.shape}; expected one label "
                            "per image, shape (N,). Save labels=labels.reshape(-1).")
        if len(raw_labels) != len(images):
            raise DataError(
                f"{path}: {len(images)} images but {len(raw_labels)} labels; they must match."
            )
        if classes is not None and np.issubdtype(raw_labels.dtype, np.integer):
            if raw_labels.size and (raw_labels.min() < 0 or raw_labels.max() >= len(classes)):
                raise DataError(
                    f"{path}: label values must index 'classes' (0..{len(classes) - 1}); found "
                    f"{raw_labels.min()}..{raw_labels.max()}."
                )
            labels = [classes[int(i)] for i in raw_labels]
        else:
            labels = [str(v) for v in raw_labels]
    inputs = list(images)  # views into one array: no copy
    origins = [f"{path.name} index {i}" for i in range(len(images))]
    return Examples(inputs=inputs, labels=labels, origins=origins, modality=IMAGE,
                    source=path.name)


def _checked_images(path: Path, images: np.ndarray) -> np.ndarray:
    """The ``images`` array, or a DataError naming what is wrong with its shape or values."""
    shape = tuple(images.shape)
    problem = None
    if images.ndim not in (3, 4):
        problem = f"has shape {shape}; expected (N, H, W) or (N, H, W, C)"
    elif shape[0] == 0:
        problem = "holds no images (N is 0)"
    elif 0 in shape[1:3]:
        problem = f"has shape {shape}: an image must be at least 1 pixel high and wide"
    elif images.ndim == 4 and shape[3] not in (1, 3, 4):
        problem = (f"has {shape[3]} channels (shape {shape}); an image has 1 (grey), 3 (RGB) "
                   "or 4 (RGBA)")
        if shape[1] in (1, 3, 4):
            problem += ". It looks channels-first: save images.transpose(0, 2, 3, 1)"
    elif images.dtype.kind not in "biuf":
        problem = f"has dtype {images.dtype}, not pixel numbers"
    elif images.dtype.kind in "iuf":
        lo, hi = images.min(), images.max()
        top = 255 if images.dtype.kind == "f" else 65535
        if not (np.isfinite(lo) and np.isfinite(hi)):
            problem = "holds NaN or infinite values"
        elif lo < 0 or hi > top:
            problem = (f"holds values {lo}..{hi}; pixels are 0..255 (or 0..1 as floats, or "
                       "0..65535 as 16-bit integers)")
    if problem:
        raise DataError(f"{path}: array 'images' {problem}. Save images as uint8 (N, H, W) or "
                        "(N, H, W, C) with C in 1, 3, 4: numpy.savez(path, images=..., "
                        "labels=...).")
    return images


def as_uint8(arr: np.ndarray, sixteen_bit: bool = False) -> np.ndarray:
    """8-bit pixels of an image or a stack of them, decided once for the whole array:
    integers up to 255 stay, larger ones are 16-bit (scaled by 255/65535, never clipped: a
    clipped 16-bit image is almost all white), floats up to 1.0 are scaled by 255."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    hi = arr.max() if arr.size else 0
    if arr.dtype.kind in "iu":
        if sixteen_bit or hi > 255:
            wide = np.clip(arr, 0, 65535).astype(np.uint32)
            return ((wide + 128) // 257).astype(np.uint8)
        return np.clip(arr, 0, 255).astype(np.uint8)
    return np.clip(arr * (255.0 if hi <= 1.0 else 1.0), 0, 255).astype(np.uint8)


def to_pil(x: Any) -> Image.Image:
    """Arrays (HxW, HxWxC; see ``as_uint8``) and files become RGB PIL images.

    Lives here, not with the vision backbone, so torch-free code (the ONNX engine) reads
    images exactly as the torch path does."""
    if isinstance(x, Image.Image):
        return _rgb(x)
    if isinstance(x, np.ndarray):
        arr = as_uint8(x)
        if arr.ndim == 3 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        return Image.fromarray(arr).convert("RGB")
    with Image.open(x) as im:
        return _rgb(im)


def _rgb(im: Image.Image) -> Image.Image:
    """PIL's own convert("RGB") clips 16-bit ("I;16", "I") and float ("F") pixels at 255."""
    if im.mode.startswith("I"):
        return Image.fromarray(as_uint8(np.asarray(im), sixteen_bit=True)).convert("RGB")
    if im.mode == "F":
        return Image.fromarray(as_uint8(np.asarray(im))).convert("RGB")
    return im.convert("RGB")
