"""A real ``transferkit serve`` process on a free loopback port, shared by test_serve.py and
test_robustness.py (fitting the model and starting the server once costs most of their time);
and a real server around a fake model (``start_fake_server``) for the tests of the HTTP layer,
which need a model that is instant, or slow on purpose, and no fitting.

Run as a script (``python serve_helpers.py fake SPEC``) this file is that fake server.
"""

from __future__ import annotations

import atexit
import functools
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

API_KEY_ENV = "TK_TEST_API_KEY"
API_KEY = "test-key-0123456789"
SMS = Path(__file__).resolve().parents[1] / "src" / "transferkit" / "demo_data"
# Small limits so that every limit can be crossed with a small request.
LIMIT_ARGS = ["--max-examples", "16", "--max-body-mb", "0.25", "--max-text-chars", "2000"]
MAX_BODY = int(0.25 * 1024 * 1024)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path
    run_dir: Path | None
    key: str | None = None
    default_headers: dict[str, str] = field(default_factory=dict)

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None, *, auth: bool = True,
                timeout: float = 60) -> Response:
        """One request on a fresh connection; ``body`` may be bytes, an iterator of bytes
        (sent chunked) or a JSON-able object."""
        hdrs = dict(headers or {})
        if auth and self.key:
            hdrs.setdefault("X-API-Key", self.key)
        chunked = body is not None and not isinstance(body, bytes | str | dict | list)
        if isinstance(body, dict | list):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=hdrs, encode_chunked=chunked)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413) and closed before we finished sending
        try:
            resp = conn.getresponse()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()},
                            resp.read())
        finally:
            conn.close()

    def predict(self, texts: list[str], **kwargs: Any) -> Response:
        return self.request("POST", "/predict", {"texts": texts}, **kwargs)

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_server(run_dir: Path, *args: str, key: str | None = None,
                 timeout: float = 180) -> Server:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "transferkit", "serve", str(run_dir), "--port", str(port),
           *args]
    if key:
        env[API_KEY_ENV] = key
        cmd += ["--api-key-env", API_KEY_ENV]
    return _launch(cmd, env, port, run_dir, key, timeout)


def start_fake_server(*, modality: str = "text", delay_s: float = 0.0, max_batch: int = 32,
                      connections: dict[str, Any] | None = None, key: str | None = None,
                      timeout: float = 60) -> Server:
    """The real app and HTTP layer around ``FakeEngine``; ``connections`` are the fields of
    ``ConnectionLimits``."""
    port = free_port()
    spec = {"port": port, "modality": modality, "delay_s": delay_s, "max_batch": max_batch,
            "connections": connections or {}, "key": key}
    cmd = [sys.executable, str(Path(__file__).resolve()), "fake", json.dumps(spec)]
    return _launch(cmd, {**os.environ}, port, None, key, timeout)


def _launch(cmd: list[str], env: dict[str, str], port: int, run_dir: Path | None,
            key: str | None, timeout: float) -> Server:
    log = Path(tempfile.mkstemp(prefix="tk-serve-", suffix=".log")[1])
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    server = Server(proc, port, log, run_dir, key)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.output()}")
        try:
            if server.request("GET", "/health", auth=False, timeout=2).status == 200:
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server did not come up in {timeout} s:\n{server.output()}")


def sms_texts(split: str, n: int) -> tuple[list[str], list[str]]:
    import pandas as pd

    frame = pd.read_csv(SMS / f"sms_spam.{split}.csv", keep_default_na=False)
    # both classes in every slice: spam is 1 in 8 of the data
    frame = pd.concat([frame[frame.label == "spam"].head(n // 4),
                       frame[frame.label == "ham"].head(n - n // 4)])
    return frame.text.tolist(), frame.label.tolist()


def fit_text_run(directory: Path) -> Path:
    """MiniLM + probe on a slice of sms_spam, fitted and saved the way users do it."""
    from transferkit import Classifier
    from transferkit._io import write_json
    from transferkit.data.examples import Dataset, Examples

    texts, labels = sms_texts("train", 160)
    test_texts, test_labels = sms_texts("test", 48)
    train = Examples(texts, labels, [f"train {i}" for i in range(len(texts))], "text")
    test = Examples(test_texts, test_labels, [f"test {i}" for i in range(len(test_texts))],
                    "text")
    data = Dataset(train=train, test=test, classes=sorted(set(labels)))
    clf = Classifier("minilm", strategy="probe").fit(data)
    run = directory / "sms-run"
    clf.save(run)
    write_json(run / "metrics.json", clf.evaluate(data))
    return run


_TMP = Path(tempfile.mkdtemp(prefix="tk-serve-tests-"))
atexit.register(shutil.rmtree, _TMP, True)


@functools.cache
def text_run() -> Path:
    return fit_text_run(_TMP)


@functools.cache
def text_server() -> Server:
    """The shared server: API key required, small limits, a 20 ms batching window."""
    server = start_server(text_run(), *LIMIT_ARGS, "--max-wait-ms", "20", key=API_KEY)
    atexit.register(server.stop)
    return server


class FakeEngine:
    """What the server needs of an engine; every example gets [0.25, 0.75] after ``delay_s``
    per engine call (a stand-in for a heavy model)."""

    classes = ["no", "yes"]
    multilabel = False
    config: dict[str, Any] = {}

    def __init__(self, modality: str, delay_s: float) -> None:
        self.modality = modality
        self.delay_s = delay_s

    def predict_proba(self, inputs: list[Any]) -> Any:
        import numpy as np

        time.sleep(self.delay_s)
        return np.tile(np.array([0.25, 0.75], dtype=np.float32), (len(inputs), 1))

    def labels_from_proba(self, proba: Any) -> list[str]:
        return [self.classes[i] for i in proba.argmax(axis=1)]


def _run_fake_server(spec: dict[str, Any]) -> None:
    from transferkit.reuse.serve import ServeOptions, create_app
    from transferkit.reuse.serve_http import ConnectionLimits, build_server, run_server

    connections = ConnectionLimits(**spec["connections"])
    options = ServeOptions(max_batch=spec["max_batch"], max_wait_ms=1.0, api_key=spec["key"])
    app = create_app(FakeEngine(spec["modality"], spec["delay_s"]), options,
                     engine_name="fake")
    run_server(build_server(app, host="127.0.0.1", port=spec["port"], limits=connections))


if __name__ == "__main__" and sys.argv[1:2] == ["fake"]:
    _run_fake_server(json.loads(sys.argv[2]))
