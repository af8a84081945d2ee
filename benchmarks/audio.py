"""Audio: clips per second of feature extraction for each audio backbone, and the study's timings.

Extraction runs through transferkit's one extraction path (``extract_features``: decode at the
backbone's rate, fixed-length clips, batches; no feature cache) on keywords_espeak clips, fp32
on the CPU. The speech embedding has a peer: pyopen-wakeword's own streaming API
(``OpenWakeWordFeatures.process_streaming``), which runs the same two TFLite models one 80 ms
window at a time; it is timed on the same clips, one fresh feature extractor per clip (its
state would otherwise carry one clip into the next). The others have no installed peer and are
reported as clips/s alone.

``--finetune``: fits ``logmel-efficientnet_lite0`` on all training clips, its probe and then
``partial`` fine-tuning (``--lr``, ``--epochs``; the spectrogram at ``--image-size`` px), and
scores both on the test clips: does fine-tuning beat the backbone's own probe?

``--study DIR``: adds the per-strategy timings (wall, extraction and training seconds, median
over the cells) of a ``transferkit study`` folder, e.g. the README's keywords_espeak study.

    cd benchmarks && OMP_WAIT_POLICY=PASSIVE ../.venv/bin/python audio.py --runs 3
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np

BACKBONES = ("speech-embedding", "logmel-efficientnet_lite0", "resemblyzer")


def _clips(root: Path, per_class: int) -> list[Path]:
    return [p for word in sorted(d for d in (root / "train").iterdir() if d.is_dir())
            for p in sorted(word.glob("*.flac"))[:per_class]]


def _package_features(clips: list[Path]) -> list[np.ndarray]:
    """The peer: pyopen-wakeword's streaming features, clip by clip, mean-pooled."""
    import pyopen_wakeword
    import soundfile as sf
    from pyopen_wakeword import OpenWakeWordFeatures

    root = Path(pyopen_wakeword.__file__).parent
    out = []
    for path in clips:
        features = OpenWakeWordFeatures(root / "models" / "melspectrogram.tflite",
                                        root / "models" / "embedding_model.tflite",
                                        root / "lib" / "libtensorflowlite_c.so")
        samples, _ = sf.read(str(path), dtype="int16")
        embeddings = list(features.process_streaming(samples.tobytes()))
        out.append(np.mean(np.concatenate([e.reshape(-1, 96) for e in embeddings]), axis=0))
    return out


def _study_timings(folder: Path) -> dict[str, dict[str, float]]:
    cells = [json.loads(p.read_text()) for p in sorted((folder / "cells").glob("*.json"))]
    out: dict[str, dict[str, float]] = {}
    for name in sorted({c["strategy"] for c in cells}):
        mine = [c for c in cells if c["strategy"] == name]
        out[name] = {key: float(statistics.median(float(c.get(key) or 0.0) for c in mine))
                     for key in ("wall_seconds", "extract_seconds", "train_seconds")}
        out[name]["cells"] = len(mine)
    return out


def _finetune(root: Path, image_size: int, lr: float, epochs: int) -> dict[str, dict]:
    """``logmel-efficientnet_lite0``: the probe, then ``partial`` fine-tuning, on all 1,000
    training clips, scored on the 300 test clips (seed 0)."""
    import time

    from transferkit import Classifier, load_data

    data = load_data(root)
    out = {}
    for strategy, options in (("probe", {}), ("partial", {"lr": lr, "epochs": epochs})):
        start = time.perf_counter()
        clf = Classifier("logmel-efficientnet_lite0", strategy, image_size=image_size, seed=0,
                         strategy_options=options).fit(data)
        out[strategy] = {"accuracy": clf.evaluate(data)["accuracy"], "options": options,
                         "seconds": time.perf_counter() - start,
                         "steps": clf.fit_info["cost"]["steps"]}
        print(f"logmel-efficientnet_lite0 {strategy} at {image_size} px: "
              f"{out[strategy]['accuracy']:.4f} ({out[strategy]['seconds']:.0f} s)", flush=True)
    return out


def main() -> None:
    from common import DATA, alternate, arguments, entry, median, print_table, write_results

    import transferkit
    from transferkit.backbones import load_backbone
    from transferkit.train.cache import extract_features

    ap = arguments(__doc__, runs=3, per_class=10, peer_clips=20)
    ap.add_argument("--study", type=Path, default=None)
    ap.add_argument("--finetune", action="store_true",
                    help="also fit logmel-efficientnet_lite0 (probe, then partial) on all clips")
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    root = DATA / "keywords_espeak"
    clips = _clips(root, args.per_class)
    versions = {"transferkit": transferkit.__version__}
    entries, details = [], {"clips": len(clips), "backbones": {}}
    for name in BACKBONES:
        backbone = load_backbone(name)
        extract_features(backbone, clips[:8], precision="fp32")  # warm-up: load, first call
        times = alternate(args.runs, {name: lambda b=backbone: extract_features(
            b, clips, precision="fp32")})[name]
        details["backbones"][name] = {"clips_per_s": len(clips) / median(times),
                                      "seconds": times, "feature_dim": backbone.feature_dim}
        if name == "speech-embedding":
            peer_clips = clips[:: max(1, len(clips) // args.peer_clips)][:args.peer_clips]
            timed = alternate(args.runs, {
                "ours": lambda b=backbone, c=peer_clips: extract_features(
                    b, c, precision="fp32"),
                "package": lambda c=peer_clips: _package_features(c)})
            entries.append(entry(
                "speech-embedding features, clips/s vs the package's streaming API",
                len(peer_clips) / median(timed["ours"]),
                len(peer_clips) / median(timed["package"]), "clips/s", args.runs, True,
                versions, clips=len(peer_clips)))
    if args.finetune:
        details["finetune"] = {"image_size": args.image_size,
                               **_finetune(root, args.image_size, args.lr, args.epochs)}
    if args.study is not None:
        details["study"] = {"folder": args.study.name, "timings": _study_timings(args.study)}
    for n, d in details["backbones"].items():
        print(f"{n:28s} {d['clips_per_s']:8.1f} clips/s  ({d['feature_dim']}-d features)")
    print_table(entries)
    write_results("audio", entries, **details)


if __name__ == "__main__":
    main()
