"""``speech-embedding``: Google's speech embedding (Lin et al., ICASSP 2020), as shipped in
``pyopen-wakeword`` (Apache-2.0): a mel-spectrogram and an embedding TFLite model plus the
TFLite C runtime, called here through ``ctypes``. Only those two feature models are used;
the wake-word heads in the same package carry a non-commercial licence and are never read.

The models: ``melspectrogram.tflite`` takes int16-scaled samples ``[B, T]`` at 16 kHz and
gives 32 log-mel bands every 10 ms (``floor((T - 400) / 160)`` frames, the package rescales
them by ``x / 10 + 2``); ``embedding_model.tflite`` maps 76 frames (775 ms) to 96 numbers,
and the package steps it by 8 frames (80 ms). The package's streaming API runs one 80 ms
window per call; here the interpreters' inputs are resized to whole clips and batches. The
mel model floors its log at 80 dB below the loudest value *of its whole input tensor*
(librosa's ``top_db``), so clips sharing a call would change each other's features: one mel
call per clip (1-2 ms). The embedding model is fully convolutional with a time stride of 8
frames: given a clip's whole spectrogram ``[B, frames, 32, 1]`` it returns every 80 ms
window's embedding at once, equal to running each 76-frame window alone (max difference
0.0 on the check clips) and 9x faster (the windows overlap by 90%). One embedding call runs
the whole batch.

Pooling, measured on keywords_espeak (1 s keywords; scikit-learn logistic regression on
standardised features, 8 clips/word averaged over 5 draws | all 100/word; 300 test clips of
voices unseen in training):

=================================  =============  =============
padding (windows per 1 s clip)     mean           mean+max
=================================  =============  =============
none (3)                           .547 | .760    .551 | .763
0.125 s of silence each side (6)   .703 | .873    .722 | .890
0.25 s each side (9)               .805 | .920    .818 | .927
0.375 s each side (13)             .838 | .920    .859 | .940
0.5 s each side (16)               .849 | .900    .857 | .933
=================================  =============  =============

A 775 ms window sees a whole keyword only when the clip is padded past its edges, so clips
get ``CONTEXT_SECONDS`` = 0.375 s of silence on both sides (0.5 s is no better, with 23% more
windows to compute), and the features are the mean and the max over the windows (192-d):
mean+max was at least as good as the mean at every padding, and 2 points better here.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
import os
import platform
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import write_json
from ..errors import ArtifactError, BackboneNotFoundError
from .audio import AUDIO_ALIASES, FOLDER_KINDS, AudioBackbone, saved_setting
from .catalogue import package_dir, register_backbone
from .text import BACKBONE_FILE

PACKAGE, PIP, KIND = "pyopen_wakeword", "pyopen-wakeword", "speech-embedding"
MEL_MODEL, EMBEDDING_MODEL = "melspectrogram.tflite", "embedding_model.tflite"
RUNTIME = "libtensorflowlite_c.so"
RATE = 16_000
INT16_SCALE = 32767.0
WINDOW_FRAMES, WINDOW_STEP, N_MELS, EMBEDDING_DIM = 76, 8, 32, 96
CONTEXT_SECONDS = 0.375
#: spectrogram frames per embedding call (the runtime's intermediate tensors overflow near
#: 2**31 bytes: 1,000 clips of 1.75 s failed in the mel model)
MAX_EMBEDDING_FRAMES = 2**16


def package_files() -> Path | None:
    """The package folder when both feature models and the runtime are there."""
    root = package_dir(PACKAGE)
    if root is None or not all((root / "models" / f).is_file()
                               for f in (MEL_MODEL, EMBEDDING_MODEL)):
        return None
    return root if (root / "lib" / RUNTIME).is_file() else None


def check_platform() -> None:
    machine = platform.machine().lower()
    if not (sys.platform.startswith("linux") and machine in ("x86_64", "amd64")):
        others = ", ".join(a for a in AUDIO_ALIASES if a != KIND)
        raise BackboneNotFoundError(
            f"speech-embedding runs on the TFLite runtime that {PIP} ships for Linux x86-64 "
            f"only; this is {sys.platform} {platform.machine()}. Use another audio backbone: "
            f"{others} (both run on torch anywhere).")


class _Interpreter:
    """One TFLite model; its input is resized to each batch's shape (reallocated on change)."""

    _lib: Any = None
    _lock = threading.Lock()

    @classmethod
    def library(cls, path: Path) -> Any:
        if cls._lib is None:
            lib = ctypes.CDLL(str(path), mode=os.RTLD_GLOBAL)
            vp, i32, sz = ctypes.c_void_p, ctypes.c_int32, ctypes.c_size_t
            for name, args, res in [
                ("TfLiteModelCreateFromFile", [ctypes.c_char_p], vp),
                ("TfLiteInterpreterOptionsCreate", [], vp),
                ("TfLiteInterpreterOptionsSetNumThreads", [vp, i32], None),
                ("TfLiteInterpreterCreate", [vp, vp], vp),
                ("TfLiteInterpreterAllocateTensors", [vp], ctypes.c_int),
                ("TfLiteInterpreterInvoke", [vp], ctypes.c_int),
                ("TfLiteInterpreterGetInputTensor", [vp, i32], vp),
                ("TfLiteInterpreterGetOutputTensor", [vp, i32], vp),
                ("TfLiteTensorNumDims", [vp], i32), ("TfLiteTensorDim", [vp, i32], i32),
                ("TfLiteInterpreterResizeInputTensor", [vp, i32, ctypes.POINTER(i32), i32],
                 ctypes.c_int),
                ("TfLiteTensorCopyFromBuffer", [vp, vp, sz], ctypes.c_int),
                ("TfLiteTensorCopyToBuffer", [vp, vp, sz], ctypes.c_int),
            ]:
                fn = getattr(lib, name)
                fn.argtypes, fn.restype = args, res
            cls._lib = lib
        return cls._lib

    def __init__(self, runtime: Path, model: Path, threads: int) -> None:
        self.lib = lib = self.library(runtime)
        self.name = model.name
        self.model = lib.TfLiteModelCreateFromFile(str(model).encode())
        options = lib.TfLiteInterpreterOptionsCreate()
        lib.TfLiteInterpreterOptionsSetNumThreads(options, max(1, threads))
        self.interpreter = lib.TfLiteInterpreterCreate(self.model, options)
        if not self.model or not self.interpreter:
            raise BackboneNotFoundError(f"The TFLite runtime could not load {model}. Fix: pip "
                                        f"install --force-reinstall {PIP}.")
        self.shape: tuple[int, ...] | None = None  # allocated on the first run

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            raise RuntimeError(f"TFLite {what} failed for {self.name} (status {status}, input "
                               f"{self.shape})")

    def run(self, x: np.ndarray) -> np.ndarray:
        lib = self.lib
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.shape != x.shape:
            dims = (ctypes.c_int32 * x.ndim)(*x.shape)
            self.shape = x.shape
            self._check(lib.TfLiteInterpreterResizeInputTensor(self.interpreter, 0, dims,
                                                               x.ndim), "resize")
            self._check(lib.TfLiteInterpreterAllocateTensors(self.interpreter), "allocation")
        tensor = lib.TfLiteInterpreterGetInputTensor(self.interpreter, 0)
        self._check(lib.TfLiteTensorCopyFromBuffer(tensor, x.ctypes.data, x.nbytes), "input")
        self._check(lib.TfLiteInterpreterInvoke(self.interpreter), "invocation")
        out_t = lib.TfLiteInterpreterGetOutputTensor(self.interpreter, 0)
        shape = [lib.TfLiteTensorDim(out_t, i) for i in range(lib.TfLiteTensorNumDims(out_t))]
        out = np.empty(shape, dtype=np.float32)
        self._check(lib.TfLiteTensorCopyToBuffer(out_t, out.ctypes.data, out.nbytes), "output")
        return out


_RUNTIMES: dict[tuple[str, int], tuple[_Interpreter, _Interpreter]] = {}


def _interpreters(root: Path, threads: int) -> tuple[_Interpreter, _Interpreter]:
    """One (mel, embedding) pair per process and thread count, shared by every backbone
    object (a deep copy of the backbone then needs no copy of C state)."""
    key = (str(root), threads)
    if key not in _RUNTIMES:
        runtime = root / "lib" / RUNTIME
        _RUNTIMES[key] = (_Interpreter(runtime, root / "models" / MEL_MODEL, threads),
                          _Interpreter(runtime, root / "models" / EMBEDDING_MODEL, threads))
    return _RUNTIMES[key]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class SpeechEmbeddingBackbone(AudioBackbone):
    """Mean and max of the 96-d speech embeddings of a clip's 80 ms-spaced windows."""

    frozen_only = True
    parallel_batches = False  # its own runtime and threads
    autocasts = False  # TFLite computes in fp32

    def __init__(self, root: Path, *, source: str, resolved: str,
                 clip_seconds: float | None) -> None:
        check_platform()
        super().__init__(source, resolved, rate=RATE, clip_seconds=clip_seconds)
        self.root = root
        self.feature_dim = 2 * EMBEDDING_DIM
        self.context = int(round(CONTEXT_SECONDS * RATE))
        try:
            version = importlib.metadata.version(PIP)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        self.package = {"name": PIP, "version": version,
                        "mel_sha256": _sha256(root / "models" / MEL_MODEL),
                        "embedding_sha256": _sha256(root / "models" / EMBEDDING_MODEL)}
        self.windows = self.window_count(self.samples)
        if self.windows < 1:
            raise BackboneNotFoundError("speech-embedding needs clips of at least 0.03 s.")
        self.placeholder = nn.Identity()  # the layer group: the weights live in TFLite

    def window_count(self, samples: int) -> int:
        frames = (samples + 2 * self.context - 400) // 160
        return max(0, (frames - WINDOW_FRAMES) // WINDOW_STEP + 1)

    def embeddings(self, waveform: np.ndarray) -> np.ndarray:
        """``[B, windows, 96]`` for ``[B, T]`` samples in -1..1 (batched TFLite calls)."""
        mel, emb = _interpreters(self.root, torch.get_num_threads())
        x = np.pad(waveform.astype(np.float32) * INT16_SCALE,
                   ((0, 0), (self.context, self.context)))
        with _Interpreter._lock:  # an interpreter is not thread-safe (the server has threads)
            mels = np.concatenate([mel.run(x[i:i + 1]) for i in range(len(x))]
                                  ).reshape(len(x), -1, N_MELS, 1)
            mels = mels / 10 + 2  # what the embedding model was trained on (the package's)
            per_call = max(1, MAX_EMBEDDING_FRAMES // mels.shape[1])
            out = np.concatenate([emb.run(mels[i:i + per_call])
                                  for i in range(0, len(mels), per_call)])
        n = (mels.shape[1] - WINDOW_FRAMES) // WINDOW_STEP + 1
        return out.reshape(len(x), n, EMBEDDING_DIM)

    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        waveform = inputs["waveform"]
        e = self.embeddings(waveform.detach().float().cpu().numpy())
        pooled = np.concatenate([e.mean(axis=1), e.max(axis=1)], axis=1)
        return torch.from_numpy(pooled).to(waveform.device)

    def layer_groups(self) -> list[nn.Module]:
        return [self.placeholder]

    def parameter_count(self) -> int:
        """Weights of the two TFLite models, estimated as their float32 bytes / 4 (the
        runtime's C API does not list a model's tensors); 606k for pyopen-wakeword 1.1.0."""
        return sum((self.root / "models" / f).stat().st_size // 4
                   for f in (MEL_MODEL, EMBEDDING_MODEL))

    def onnx_problem(self) -> str | None:
        return ("speech-embedding runs on its own TFLite runtime, which an ONNX graph cannot "
                "hold. Predict and serve the run with the torch engine (--engine torch; it "
                "runs on the CPU), or fit logmel-efficientnet_lite0 or resemblyzer to export")

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": KIND, **self.clip_settings(), "context_seconds": CONTEXT_SECONDS,
                "pooling": "mean+max", "window_frames": WINDOW_FRAMES,
                "window_step": WINDOW_STEP, "package": dict(self.package)}

    def save(self, directory: Path) -> None:
        """A marker, not weights: the models come from the installed package, whose version
        and file hashes are recorded (and checked on reload)."""
        directory.mkdir(parents=True, exist_ok=True)
        write_json(directory / BACKBONE_FILE, self.preprocessing())

    @classmethod
    def from_folder(cls, directory: Path, info: dict, *, source: str, resolved: str
                    ) -> SpeechEmbeddingBackbone:
        file = directory / BACKBONE_FILE
        clip = saved_setting(info, "clip_seconds", (int, float), file)
        recorded = saved_setting(info, "package", (dict,), file)
        root = package_files()
        if root is None:
            raise BackboneNotFoundError(
                f"{directory} uses speech-embedding, whose package is not installed. Fix: pip "
                f"install {PIP}=={recorded.get('version', '')} (or transferkit models "
                "--install speech-embedding).")
        backbone = cls(root, source=source, resolved=f"{resolved}; models from {root}",
                       clip_seconds=clip)
        if backbone.package != recorded:
            raise ArtifactError(
                f"{directory} was made with {PIP} {recorded.get('version')!r}; the installed "
                f"{backbone.package['version']} has other model files, so its features would "
                f"differ. Fix: pip install {PIP}=={recorded.get('version')}, or re-run the fit.")
        return backbone


FOLDER_KINDS[KIND] = SpeechEmbeddingBackbone


@register_backbone(KIND, "audio", "", "Google speech embedding (TFLite, pyopen-wakeword), "
                   "96-d every 80 ms, mean+max pooled 192-d, 16 kHz (frozen: probe / "
                   "prototypes only; Linux x86-64)", package=PACKAGE, pip=PIP,
                   locate=package_files)
def load_speech_embedding(alias: Any, path: Path, options: dict, image_size: int | None
                          ) -> SpeechEmbeddingBackbone:
    return SpeechEmbeddingBackbone(path, source=alias.name,
                                   resolved=f"bundled package {alias.package_names} ({path})",
                                   clip_seconds=options.get("clip_seconds"))
