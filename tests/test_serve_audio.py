"""``transferkit serve`` on an audio model, as users run it: a real server process answering
FLAC uploads (JSON base64, multipart files, a raw ``audio/flac`` body) with the probabilities
``transferkit predict`` gives for the same files, and a 4xx naming the problem for bad audio.

The model is a speech-embedding probe fitted on a few keywords_espeak clips per word (the
backbone is frozen: the fit is seconds); the ONNX engine is checked on a logmel probe."""

from __future__ import annotations

import base64
import io
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from serve_helpers import Server, start_server

pytestmark = pytest.mark.slow

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
PARITY = 1e-5  # served against `predict`, same engine, same file bytes



def _examples(root: Path, split: str, per_word: int):
    from transferkit.data.examples import AUDIO, Examples

    paths = [p for w in WORDS for p in sorted((root / split / w).glob("*.flac"))[:per_word]]
    return Examples(inputs=paths, labels=[p.parent.name for p in paths],
                    origins=[str(p) for p in paths], modality=AUDIO, source=str(root / split))


def _fit_run(root: Path, backbone: str, directory: Path, per_word: int = 4) -> Path:
    """A probe on ``per_word`` training clips a word, saved as users save it, with its
    metrics."""
    from transferkit import Classifier
    from transferkit._io import write_json
    from transferkit.data.examples import Dataset

    data = Dataset(train=_examples(root, "train", per_word), test=_examples(root, "test", 1),
                   classes=sorted(WORDS))
    clf = Classifier(backbone, "probe").fit(data)
    run = directory / f"{backbone}-run"
    clf.save(run)
    write_json(run / "metrics.json", clf.evaluate(data))
    return run


@pytest.fixture(scope="module")
def clips(keywords, tmp_path_factory) -> Path:
    """Six test clips (voices unseen in training) in a folder of their own: what is uploaded
    and what `predict` reads."""
    folder = tmp_path_factory.mktemp("uploads")
    for w in ("yes", "no", "left", "right", "stop", "go"):
        src = sorted((keywords / "test" / w).glob("*.flac"))[3]
        shutil.copy(src, folder / src.name)
    return folder


@pytest.fixture(scope="module")
def run(keywords, tmp_path_factory) -> Path:
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("speech-embedding's TFLite runtime ships for Linux x86-64 only")
    return _fit_run(keywords, "speech-embedding", tmp_path_factory.mktemp("audio-run"))


@pytest.fixture(scope="module")
def server(run):
    srv = start_server(run, "--max-wait-ms", "5")  # default limits: 30 s a clip
    yield srv
    assert srv.stop() == 0


def _cli_predict(run: Path, folder: Path, out: Path, *args: str) -> dict[str, dict[str, float]]:
    """``transferkit predict RUN FOLDER``: each file's probabilities, by file name."""
    subprocess.run([sys.executable, "-m", "transferkit", "predict", str(run), str(folder),
                    "--output", str(out), *args], check=True, capture_output=True, timeout=300)
    frame = pd.read_csv(out, keep_default_na=False)
    assert (frame["error"] == "").all(), frame["error"].tolist()
    return {Path(r["input"]).name: {c: r[f"prob_{c}"] for c in WORDS}
            for _, r in frame.iterrows()}


def _multipart(files: list[tuple[str, bytes]], field: str = "audio",
               media: str = "audio/flac") -> tuple[bytes, dict[str, str]]:
    boundary = "tk-audio-boundary"
    body = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{name}"\r\nContent-Type: {media}\r\n\r\n'.encode() + data + b"\r\n"
        for name, data in files) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def _served(server: Server, files: list[tuple[str, bytes]]) -> dict[str, list[dict]]:
    """The predictions for ``files`` sent each way: one JSON batch, one multipart form, and
    one raw ``audio/flac`` body per file."""
    as_json = server.request("POST", "/predict", {
        "audio": [base64.b64encode(data).decode() for _, data in files]})
    body, headers = _multipart(files)
    as_form = server.request("POST", "/predict", body, headers)
    raw = [server.request("POST", "/predict", data, {"Content-Type": "audio/flac"})
           for _, data in files]
    for answer in (as_json, as_form, *raw):
        assert answer.status == 200, answer.body
    return {"json": as_json.json()["predictions"], "multipart": as_form.json()["predictions"],
            "raw": [a.json()["predictions"][0] for a in raw]}


def _max_diff(served: list[dict], expected: list[dict[str, float]]) -> float:
    return max(abs(p["probabilities"][c] - e[c])
               for p, e in zip(served, expected, strict=True) for c in WORDS)


def test_flac_uploads_every_way_match_predict(server, run, clips, tmp_path):
    files = [(p.name, p.read_bytes()) for p in sorted(clips.glob("*.flac"))]
    expected = _cli_predict(run, clips, tmp_path / "predictions.csv")
    served = _served(server, files)
    for way, predictions in served.items():
        assert len(predictions) == len(files), way
        want = [expected[name] for name, _ in files]
        assert [p["label"] for p in predictions] == [max(e, key=e.get) for e in want], way
        assert set(predictions[0]["probabilities"]) == set(WORDS)
        assert _max_diff(predictions, want) <= PARITY, way
    # the probe knows these words: the served answers are not a constant
    right = [p["label"] == name.split("_")[0]
             for p, (name, _) in zip(served["json"], files, strict=True)]
    assert sum(right) >= 3, served["json"]
    meta = server.request("GET", "/metadata").json()
    assert meta["modality"] == "audio" and meta["labels"] == sorted(WORDS)
    assert meta["limits"]["max_audio_seconds"] == 30


def _flac(samples: np.ndarray, rate: int = 16_000) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, samples.astype(np.float32), rate, format="FLAC")
    return buf.getvalue()


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def bad_audio(clips) -> dict[str, bytes]:
    good = next(iter(sorted(clips.glob("*.flac")))).read_bytes()
    noise = np.random.default_rng(0).normal(0, 0.1, 31 * 16_000)
    return {"truncated": good[:len(good) // 2], "text": b"this is a text file, not audio\n",
            "png": _png(), "long": _flac(noise), "empty": b"",
            "silent": _flac(np.zeros(16_000))}


# (bad audio, status, words the message must hold)
BAD = [
    ("truncated", 422, ["truncated"]),
    ("text", 422, ["not audio"]),
    ("png", 422, ["not audio"]),
    ("long", 413, ["31.0 s", "limit is 30 s"]),
    ("empty", 422, ["empty"]),
    ("silent", 422, ["silent"]),
]


@pytest.mark.parametrize(("case", "status", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_audio_gets_a_4xx_naming_the_problem(server, bad_audio, case, status, words):
    data = bad_audio[case]
    body, headers = _multipart([("clip.flac", data)])
    answers = {
        "json": (server.request("POST", "/predict",
                                {"audio": [base64.b64encode(data).decode()]}), "audio[0]"),
        "multipart": (server.request("POST", "/predict", body, headers), "file 1"),
        "raw": (server.request("POST", "/predict", data, {"Content-Type": "audio/flac"}),
                "the audio body"),
    }
    for way, (answer, name) in answers.items():
        assert answer.status == status, (way, answer.status, answer.body)
        detail = answer.json()["detail"]
        for word in [name, *words]:
            assert word in detail, (way, detail)


def test_a_bad_clip_among_good_ones_is_named_by_its_place(server, bad_audio, clips):
    good = next(iter(sorted(clips.glob("*.flac")))).read_bytes()
    encoded = [base64.b64encode(d).decode() for d in (good, bad_audio["truncated"], good)]
    answer = server.request("POST", "/predict", {"audio": encoded})
    assert answer.status == 422
    assert "audio[1]" in answer.json()["detail"] and "truncated" in answer.json()["detail"]


def test_text_request_to_an_audio_model_is_422_naming_audio(server):
    answer = server.request("POST", "/predict", {"texts": ["yes"]})
    assert answer.status == 422
    detail = answer.json()["detail"]
    assert "classifies audio clips" in detail and '{"audio": [' in detail, detail
    assert "'texts'" in detail
    assert server.request("POST", "/predict", b"yes", {"Content-Type": "text/plain"}
                          ).status == 415


# -- ONNX engine: a logmel probe exported and served -----------------------------------------
def test_onnx_server_answers_like_torch(keywords, clips, tmp_path_factory, tmp_path):
    """`export --onnx` on a logmel-efficientnet_lite0 probe; its ONNX server answers the same
    uploads within 1e-4 of `predict` with the torch engine in fp32."""
    pytest.importorskip("onnxruntime")
    run = _fit_run(keywords, "logmel-efficientnet_lite0", tmp_path_factory.mktemp("logmel"),
                   per_word=2)
    done = subprocess.run([sys.executable, "-m", "transferkit", "export", str(run), "--onnx"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    # bf16 is "auto" on a fast CPU: the export is checked against fp32, so is this
    expected = _cli_predict(run, clips, tmp_path / "torch.csv", "--precision", "fp32")
    files = [(p.name, p.read_bytes()) for p in sorted(clips.glob("*.flac"))]
    srv = start_server(run, "--engine", "onnx")
    try:
        served = _served(srv, files)
        assert srv.request("GET", "/metadata").json()["engine"] == "onnx"
    finally:
        assert srv.stop() == 0
    want = [expected[name] for name, _ in files]
    for way, predictions in served.items():
        assert _max_diff(predictions, want) <= 1e-4, way
