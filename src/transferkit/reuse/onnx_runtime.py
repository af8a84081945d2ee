"""The ONNX Runtime engine: a run's ``onnx/`` export, with no torch at prediction time.

Preprocessing is re-done here without torch, matching the torch path exactly:
text goes through ``tokenizers`` with the same truncation (and the length recorded at
export, already capped at the model's position table) and per-batch right padding; images go
through a numpy/PIL copy of timm's evaluation transform (shorter side resized to
``floor(size / crop_pct)``, centre crop, ``/255``, mean/std); audio is decoded by the same
torch-free ``data.audio.load_clip`` at the rate and length the run recorded (the spectrogram
is inside the graph). The exported graph ends in the
softmax (or sigmoid), so its output is the probabilities the torch model gives.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact.schema import BACKBONE_DIR, MAX_TEXT_TOKENS, int_in, read_config, read_json
from ..errors import ArtifactError
from .engine_base import _Base

ONNX_DIR = "onnx"
EXPORT_FILE = "export.json"
FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"

_PIL_FILTERS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}


def read_export(run_dir: Path, onnx_dir: Path | None = None) -> dict[str, Any]:
    """``onnx/export.json`` of a run, or an error saying how to make it."""
    path = (onnx_dir or run_dir / ONNX_DIR) / EXPORT_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{run_dir} has no ONNX export ({path} is missing). Run `transferkit export "
            f"{run_dir} --onnx` first (add --int8 for the quantised model), or use "
            "--engine torch.")
    export = read_json(path, _reexport(run_dir))
    if not isinstance(export, dict):
        raise ArtifactError(f"{path} is not an export record. {_reexport(run_dir)}")
    return export


def _reexport(run_dir: Path) -> str:
    return f"Export again with `transferkit export {run_dir} --onnx --overwrite`."


def open_session(path: Path, run_dir: Path) -> Any:
    import onnxruntime as ort

    if not path.is_file():
        raise ArtifactError(f"{path} is missing. Export again with `transferkit export {run_dir} "
                            "--onnx --overwrite`" + (" --int8." if "int8" in path.name else "."))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph/... classes for bad files
        raise ArtifactError(
            f"{path} is damaged or not an ONNX model ({str(e).splitlines()[0][:200]}). Export "
            f"again with `transferkit export {run_dir} --onnx --overwrite`.") from e


class OnnxEngine(_Base):
    """``predict_proba`` on ONNX Runtime (CPU), fp32 or dynamically quantised int8."""

    name = "onnx"

    def __init__(self, run_dir: str | Path, *, int8: bool = False, batch_size: int = 32,
                 onnx_dir: Path | None = None) -> None:
        run_dir = Path(run_dir)
        super().__init__(read_config(run_dir))
        self.run_dir = run_dir
        onnx_dir = onnx_dir or run_dir / ONNX_DIR  # the export stages elsewhere, then checks
        self.export = read_export(run_dir, onnx_dir)
        if self.export.get("fingerprint") != self.config.backbone.fingerprint:
            raise ArtifactError(
                f"{run_dir}/{ONNX_DIR} was exported from other weights than this run's "
                "(fingerprint mismatch). Export again with `transferkit export "
                f"{run_dir} --onnx --overwrite`.")
        if int8 and not self.export.get("int8"):
            raise ArtifactError(
                f"{run_dir} has no int8 export. Run `transferkit export {run_dir} --onnx --int8 "
                "--overwrite`, or drop --int8.")
        self.int8 = int8
        self.batch_size = batch_size
        if self.modality == "text":  # settings checked before the model is opened
            self._init_text(onnx_dir / EXPORT_FILE)
        elif self.modality == "audio":
            self._init_audio()
        else:
            self._init_image()
        self.session = open_session(onnx_dir / (INT8_FILE if int8 else FP32_FILE), run_dir)
        self.input_names = [i.name for i in self.session.get_inputs()]

    # -- text -------------------------------------------------------------------------------
    def _init_text(self, export_file: Path) -> None:
        from tokenizers import Tokenizer

        path = self.run_dir / BACKBONE_DIR / "tokenizer.json"
        if not path.is_file():
            raise ArtifactError(
                f"{path} is missing: the ONNX engine needs the fast tokenizer file. Re-run the "
                "fit with a backbone that has a fast tokenizer, or use --engine torch.")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception types
            raise ArtifactError(f"{path} is not a tokenizer ({e}). Re-run the fit.") from e
        text = self.export.get("text")
        text = text if isinstance(text, dict) else {}
        # the export caps the run's own length at the position table: never longer than that
        limit = int(self.config.backbone.preprocessing.get("max_length") or MAX_TEXT_TOKENS)
        length, pad_id = text.get("max_length"), text.get("pad_id")
        if not int_in(length, 1, limit):
            raise ArtifactError(
                f"{export_file}: text.max_length {length!r} is not a whole number from 1 to "
                f"{limit} (the run's max_length, which the export cannot exceed). "
                f"{_reexport(self.run_dir)}")
        if not int_in(pad_id, 0, tok.get_vocab_size() - 1):
            raise ArtifactError(
                f"{export_file}: text.pad_id {pad_id!r} is not a token id of {path.name}. "
                f"{_reexport(self.run_dir)}")
        tok.no_padding()
        tok.enable_truncation(max_length=length)
        self.tokenizer = tok
        self.pad_id = pad_id

    def _encode(self, texts: list[str]) -> list[Any]:
        return self.tokenizer.encode_batch([str(t) for t in texts])

    def _text_feeds(self, encodings: list[Any]) -> dict[str, np.ndarray]:
        n = max(len(e.ids) for e in encodings)
        ids = np.full((len(encodings), n), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encodings), n), dtype=np.int64)
        types = np.zeros((len(encodings), n), dtype=np.int64)
        for i, e in enumerate(encodings):
            k = len(e.ids)
            ids[i, :k] = e.ids
            mask[i, :k] = 1
            types[i, :k] = e.type_ids
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {k: feeds[k] for k in self.input_names}

    # -- images -----------------------------------------------------------------------------
    def _init_image(self) -> None:
        pre = self.config.backbone.preprocessing  # bounds checked by the schema
        try:
            _, h, w = (int(v) for v in pre["input_size"])
            self.mean = np.asarray(pre["mean"], dtype=np.float32).reshape(3, 1, 1)
            self.std = np.asarray(pre["std"], dtype=np.float32).reshape(3, 1, 1)
        except (KeyError, TypeError, ValueError) as e:
            raise ArtifactError(
                f"{self.run_dir}/config.json: backbone.preprocessing is not an RGB image "
                f"transform ({type(e).__name__}: {e}). Re-run the fit.") from e
        self.size = (h, w)
        self.crop_pct = float(pre.get("crop_pct") or 0.875)
        self.crop_mode = str(pre.get("crop_mode") or "center")
        self.filter = _PIL_FILTERS.get(str(pre.get("interpolation", "bilinear")), 2)

    def _pixels(self, x: Any) -> np.ndarray:
        """timm's eval transform (torchvision Resize + CenterCrop + ToTensor + Normalize)."""
        from ..data.images import to_pil

        img = to_pil(x)
        h, w = self.size
        sh, sw = math.floor(h / self.crop_pct), math.floor(w / self.crop_pct)
        if self.crop_mode == "squash" or sh != sw:
            img = img.resize((sw, sh), self.filter)
        else:  # shorter side to sh, as torchvision.transforms.Resize(int) does
            iw, ih = img.size
            short, long = min(iw, ih), max(iw, ih)
            new_long = int(sh * long / short)
            size = (sh, new_long) if iw <= ih else (new_long, sh)
            img = img.resize(size, self.filter)
        iw, ih = img.size
        top, left = int(round((ih - h) / 2.0)), int(round((iw - w) / 2.0))
        img = img.crop((left, top, left + w, top + h))
        arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
        return (arr - self.mean) / self.std

    # -- audio ------------------------------------------------------------------------------
    def _init_audio(self) -> None:
        from ..data.audio import MAX_CLIP_SECONDS

        pre = self.config.backbone.preprocessing
        rate, seconds = pre.get("rate"), pre.get("clip_seconds")
        if not (int_in(rate, 1000, 384_000) and isinstance(seconds, int | float) and
                not isinstance(seconds, bool) and 0 < seconds <= MAX_CLIP_SECONDS):
            raise ArtifactError(
                f"{self.run_dir}/config.json: backbone.preprocessing has no audio rate and "
                f"clip_seconds (rate {rate!r}, clip_seconds {seconds!r}). Re-run the fit.")
        self.rate, self.clip_seconds = rate, float(seconds)

    def _waveforms(self, inputs: list[Any]) -> np.ndarray:
        from ..data.audio import load_clip

        return np.stack([load_clip(x, self.rate, self.clip_seconds) for x in inputs])

    # -- engine -----------------------------------------------------------------------------
    def predict_proba(self, inputs: list[Any]) -> np.ndarray:
        inputs = list(inputs)
        k = len(self.classes)
        if not inputs:
            return np.zeros((0, k), dtype=np.float32)
        out = np.zeros((len(inputs), k), dtype=np.float32)
        if self.modality == "text":
            encodings = self._encode(inputs)
            # sorted by length and padded per batch, as the torch extraction does
            order = sorted(range(len(inputs)), key=lambda i: len(encodings[i].ids))
            for start in range(0, len(order), self.batch_size):
                idx = order[start:start + self.batch_size]
                feeds = self._text_feeds([encodings[i] for i in idx])
                out[idx] = self.session.run(None, feeds)[0]
        else:
            prepare = self._waveforms if self.modality == "audio" else \
                (lambda xs: np.stack([self._pixels(x) for x in xs]))
            for start in range(0, len(inputs), self.batch_size):
                batch = prepare(inputs[start:start + self.batch_size])
                out[start:start + len(batch)] = self.session.run(
                    None, {self.input_names[0]: batch})[0]
        return out
