"""``transferkit serve`` as users run it: a real server process on a loopback port."""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from serve_helpers import API_KEY, sms_texts, start_server, text_run, text_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    return text_server()


def _cli_predict(run: Path, texts: list[str], tmp: Path, *args: str) -> pd.DataFrame:
    src = tmp / "inputs.csv"
    pd.DataFrame({"text": texts}).to_csv(src, index=False, quoting=csv.QUOTE_ALL)
    out = tmp / "predictions.csv"
    subprocess.run([sys.executable, "-m", "transferkit", "predict", str(run), str(src),
                    "--output", str(out), *args], check=True, capture_output=True)
    return pd.read_csv(out, keep_default_na=False)


def test_concurrent_requests_match_predict_and_share_forward_passes(server, tmp_path):
    texts, _ = sms_texts("test", 48)
    before = server.request("GET", "/metadata").json()["serving"]
    with ThreadPoolExecutor(48) as pool:
        answers = list(pool.map(lambda t: server.predict([t]), texts))
    assert [a.status for a in answers] == [200] * 48
    served = [a.json()["predictions"][0] for a in answers]
    expected = _cli_predict(server.run_dir, texts, tmp_path)
    assert [p["label"] for p in served] == expected["label"].tolist()
    for p, (_, row) in zip(served, expected.iterrows(), strict=True):
        assert set(p["probabilities"]) == {"ham", "spam"}
        for c in ("ham", "spam"):  # bf16 torch: probabilities depend a little on padding
            assert abs(p["probabilities"][c] - row[f"prob_{c}"]) < 0.02
    after = server.request("GET", "/metadata").json()["serving"]
    assert after["requests"] - before["requests"] == 48
    calls = after["model_calls"] - before["model_calls"]
    assert calls < 48  # concurrent requests were answered by shared forward passes
    assert after["max_batch_seen"] > 1


def test_a_batch_in_one_request_keeps_its_order(server):
    texts, _ = sms_texts("test", 12)
    one = server.predict(texts).json()["predictions"]
    singles = [server.predict([t]).json()["predictions"][0] for t in texts]
    assert [p["label"] for p in one] == [p["label"] for p in singles]


def test_health_metadata_and_docs(server):
    assert server.request("GET", "/health", auth=False).json() == {"status": "ok"}
    meta = server.request("GET", "/metadata").json()
    assert meta["labels"] == ["ham", "spam"]
    assert meta["modality"] == "text" and meta["engine"] == "torch"
    assert meta["backbone"]["source"] == "minilm"
    assert 0.5 < meta["metrics"]["accuracy"] <= 1.0
    assert meta["transferkit_version"]
    assert meta["limits"]["max_examples"] == 16
    assert meta["limits"]["max_request_pixels"] == 64_000_000
    assert meta["connections"]["header_timeout_s"] > 0
    docs = server.request("GET", "/docs")
    assert docs.status == 200 and b"swagger" in docs.body.lower()
    schema = server.request("GET", "/openapi.json").json()
    assert "/predict" in schema["paths"]
    for path in ("/docs", "/redoc", "/openapi.json"):  # they list the labels: key required
        assert server.request("GET", path, auth=False).status == 401, path


def test_api_key_is_required_except_for_health(server):
    assert server.predict(["hi"], auth=False).status == 401
    wrong = server.predict(["hi"], auth=False, headers={"X-API-Key": "nope"})
    assert wrong.status == 401 and "API key" in wrong.json()["detail"]
    assert server.request("GET", "/metadata", auth=False).status == 401
    bearer = server.predict(["hi"], auth=False, headers={"Authorization": f"Bearer {API_KEY}"})
    assert bearer.status == 200
    assert server.predict(["hi"]).status == 200


def test_missing_api_key_variable_is_a_clear_error():
    proc = subprocess.run(
        [sys.executable, "-m", "transferkit", "serve", str(text_run()), "--api-key-env",
         "TK_SURELY_UNSET_VARIABLE"], capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert "TK_SURELY_UNSET_VARIABLE" in proc.stderr and "not set" in proc.stderr


@pytest.fixture(scope="module")
def onnx_run():
    from transferkit.reuse.onnx_export import export_onnx

    run = text_run()
    if not (run / "onnx" / "model.onnx").is_file():
        export_onnx(run)
    return run


def test_onnx_server_matches_onnx_predict(onnx_run, tmp_path):
    texts, _ = sms_texts("test", 16)
    srv = start_server(onnx_run, "--engine", "onnx")
    try:
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda t: srv.predict([t]), texts))
        assert srv.request("GET", "/metadata").json()["engine"] == "onnx"
    finally:
        assert srv.stop() == 0
    served = [a.json()["predictions"][0] for a in answers]
    expected = _cli_predict(onnx_run, texts, tmp_path, "--engine", "onnx")
    assert [p["label"] for p in served] == expected["label"].tolist()
    for p, (_, row) in zip(served, expected.iterrows(), strict=True):
        for c in ("ham", "spam"):
            assert abs(p["probabilities"][c] - row[f"prob_{c}"]) < 1e-5


def test_onnx_serving_never_imports_torch(onnx_run):
    code = (
        "import sys\n"
        "from fastapi.testclient import TestClient\n"
        "from transferkit.reuse.engines import load_engine\n"
        "from transferkit.reuse.serve import create_app\n"
        f"app = create_app(load_engine({str(onnx_run)!r}, 'onnx'), engine_name='onnx')\n"
        "with TestClient(app) as c:\n"
        "    assert c.post('/predict', json={'texts': ['hello']}).status_code == 200\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_sigterm_finishes_the_request_in_flight_and_exits_0(onnx_run):
    # A 1.5 s batching window keeps the request in the server when SIGTERM arrives.
    srv = start_server(onnx_run, "--engine", "onnx", "--max-wait-ms", "1500")
    try:
        result = {}

        def call() -> None:
            result["response"] = srv.predict(["are you coming tonight?"])

        thread = threading.Thread(target=call)
        thread.start()
        time.sleep(0.5)
        srv.proc.send_signal(signal.SIGTERM)
        thread.join(30)
        assert srv.proc.wait(30) == 0, srv.output()
        assert result["response"].status == 200
        assert result["response"].json()["predictions"][0]["label"] in ("ham", "spam")
        # and it stopped listening
        with pytest.raises(OSError):
            srv.request("GET", "/health", auth=False, timeout=2)
    finally:
        srv.stop()
