"""Class-per-folder trees of images or audio clips: ``root/<class>/*`` and
``root/{train,valid,test}/<class>/*``; a folder of loose files reads unlabelled.

A folder is image data or audio data by what its files are (their suffixes); one holding
both is an error naming the folder, never a silent choice. Nothing is decoded here:
validation opens each file, backbones decode them.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .audio import AUDIO_SUFFIXES
from .examples import AUDIO, IMAGE, Examples
from .images import IMAGE_SUFFIXES

SPLIT_FOLDERS = {"train": "train", "valid": "valid", "validation": "valid", "val": "valid",
                 "test": "test"}
MEDIA_SUFFIXES = {IMAGE: IMAGE_SUFFIXES, AUDIO: AUDIO_SUFFIXES}
LAYOUT_HINT = "Arrange files as ROOT/<class>/<image>.jpg or ROOT/<class>/<clip>.wav"


def is_class_folder(path: Path) -> bool:
    return path.is_dir() and any(p.is_dir() for p in path.iterdir())


def read_folder(root: Path, require_labels: bool = True) -> dict[str, Examples]:
    """The splits of a folder of images or audio clips (``all``, or train/valid/test)."""
    subdirs = _subdirs(root)
    if subdirs and all(p.name.lower() in SPLIT_FOLDERS for p in subdirs):
        trees = {SPLIT_FOLDERS[p.name.lower()]: (p, *_class_tree(p)) for p in subdirs}
    elif subdirs:
        trees = {"all": (root, *_class_tree(root))}
    elif require_labels:
        hint = LAYOUT_HINT.replace("ROOT", str(root))
        raise DataError(f"{root}: no class folders found. {hint}.")
    else:
        files = sorted(p for p in root.iterdir() if p.is_file() and _kind(p))
        trees = {"all": (root, files, None)}
    modality = folder_modality(root, [f for _, files, _ in trees.values() for f in files])
    out = {}
    for split, (where, files, labels) in trees.items():
        if not files and labels is not None:
            raise DataError(
                f"{where}: no images or audio clips found (looked for "
                f"{', '.join(sorted(IMAGE_SUFFIXES | AUDIO_SUFFIXES))} files in "
                f"{where}/<class>/). Check the folder layout."
            )
        # source is the full folder path: it must prefix every origin so that bad files count
        # towards max_bad_fraction of this split.
        out[split] = Examples(inputs=files, labels=labels, origins=[str(p) for p in files],
                              modality=modality, source=str(where))
    return out


def folder_modality(root: Path, files: list[Path]) -> str:
    """IMAGE or AUDIO by the files' suffixes (IMAGE for no files, as before audio existed);
    a folder with both is an error that names it and one file of each kind."""
    first: dict[str, Path] = {}
    for f in files:
        first.setdefault(_kind(f) or "", f)
    if IMAGE in first and AUDIO in first:
        raise DataError(
            f"{root}: holds both images ({first[IMAGE]}) and audio clips ({first[AUDIO]}); "
            "a dataset is one kind. Move the images and the audio clips into separate folders."
        )
    return AUDIO if AUDIO in first else IMAGE


def _class_tree(root: Path) -> tuple[list[Path], list[str]]:
    files: list[Path] = []
    labels: list[str] = []
    for class_dir in _subdirs(root):
        for f in sorted(class_dir.rglob("*")):
            if f.is_file() and _kind(f):
                files.append(f)
                labels.append(class_dir.name)
    return files, labels


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return next((kind for kind, suffixes in MEDIA_SUFFIXES.items() if suffix in suffixes), None)
