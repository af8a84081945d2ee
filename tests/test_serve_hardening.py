"""The server under attack (issue 16, items 12-15): half-open and slow connections, SIGTERM
with requests in flight, one request of many large images, clients that vanish mid-body, the
docs and the API key.

Each test runs a real server process on a loopback port around a fake model (see
serve_helpers.py): instant, or slow on purpose, so that only the HTTP layer is measured. Every
loop is bounded by a deadline, and only 127.0.0.1 is contacted.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import signal
import socket
import threading
import time
from pathlib import Path

import pytest
from serve_helpers import API_KEY, Server, start_fake_server

HEAD = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _closed_by_server(sock: socket.socket) -> bool:
    """True once the server answered (408/503) or closed; never blocks."""
    try:
        sock.recv(4096, socket.MSG_DONTWAIT)  # an answer, or b"" at the close
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def _read_answer(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes (or ``timeout``), and how long it took."""
    sock.settimeout(timeout)
    start, data = time.monotonic(), b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data, time.monotonic() - start


def _wait_for_log(server: Server, words: str, offset: int, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = server.output()[offset:]
        if words in text:
            return text
        time.sleep(0.1)
    return server.output()[offset:]


# -- 12: slowloris -------------------------------------------------------------------------
@pytest.fixture
def guarded():
    server = start_fake_server(connections={"header_timeout_s": 1.0, "body_timeout_s": 1.0,
                                            "max_connections": 256})
    yield server
    assert server.stop() == 0


def test_half_open_connections_do_not_lock_out_clients(guarded):
    """200 connections that trickle a header line every 0.3 s (and reconnect at once when
    dropped), against a server that pushes out the slowest from 128 connections on and cuts a
    request head at 1 s: every real request is answered 200, and the trickling ones are cut."""
    port = guarded.port
    stop = threading.Event()
    dropped = [0]

    def attack() -> None:
        socks: list[socket.socket] = []
        try:
            while not stop.is_set():
                for i, sock in enumerate(socks):
                    try:
                        if _closed_by_server(sock):
                            raise OSError
                        sock.send(b"X-Slow-%d: 1\r\n" % i)
                    except OSError:
                        sock.close()
                        dropped[0] += 1
                        socks[i] = _connect(port)
                        socks[i].send(HEAD)
                while len(socks) < 200:
                    socks.append(_connect(port))
                    socks[-1].send(HEAD)
                stop.wait(0.3)
        finally:
            for sock in socks:
                sock.close()

    attacker = threading.Thread(target=attack, daemon=True)
    attacker.start()
    try:
        time.sleep(1.0)  # the 200 are connected and trickling
        statuses = []
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            statuses.append(guarded.predict(["hello"], timeout=10).status)
    finally:
        stop.set()
        attacker.join(10)
    assert statuses and set(statuses) == {200}, statuses
    assert dropped[0] >= 100  # evicted at the cap or cut at the header deadline

    # without the pressure: a head that never completes gets a 408 at the deadline
    with _connect(port) as sock:
        sock.send(HEAD)
        answer, took = _read_answer(sock, timeout=10)
    assert answer.startswith(b"HTTP/1.1 408") and b"request head" in answer, answer
    assert 0.8 < took < 5


def test_a_stalled_body_is_cut_off_with_408_and_one_log_line(guarded):
    offset = len(guarded.output())
    with _connect(guarded.port) as sock:
        sock.send(HEAD + b"Content-Length: 1000\r\n\r\n" + b'{"texts": ["')
        answer, took = _read_answer(sock, timeout=10)
    assert answer.startswith(b"HTTP/1.1 408") and b"body paused" in answer, answer
    assert 0.8 < took < 5
    log = _wait_for_log(guarded, "(body timeout)", offset)
    assert log.count("\n") == 1 and "connection closed by the server (body timeout)" in log, log
    assert "Traceback" not in log and "Exception in ASGI" not in log, log
    assert guarded.predict(["still serving"]).status == 200


# -- 13: SIGTERM with heavy requests in flight -----------------------------------------------
def test_sigterm_answers_every_accepted_request_with_its_result_or_a_503_saying_why():
    """20 requests of a 0.4 s model, one at a time, and a 1.5 s graceful shutdown: some finish,
    the rest get 503 'shutting down', none a 500 or a dropped connection."""
    server = start_fake_server(delay_s=0.4, max_batch=1,
                               connections={"shutdown_timeout_s": 1.5})
    answers: list[object] = [None] * 20

    def call(i: int) -> None:
        try:
            answers[i] = server.predict([f"text {i}"], timeout=30)
        except OSError as e:
            answers[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(20)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 15
        while (server.request("GET", "/metadata").json()["serving"]["requests"] < 20
               and time.monotonic() < deadline):
            time.sleep(0.05)
        server.proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert server.proc.wait(30) == 0, server.output()
    finally:
        server.stop()
    statuses = [getattr(a, "status", repr(a)) for a in answers]
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses  # both paths were taken
    for a in answers:
        if a.status == 503:
            assert "shutting down" in a.json()["detail"] and a.headers["retry-after"] == "1"
    assert "Exception in ASGI application" not in server.output()


# -- 14: decoded pixels per request ----------------------------------------------------------
@pytest.fixture(scope="module")
def image_server():
    server = start_fake_server(modality="image")
    yield server
    assert server.stop() == 0


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, "PNG")
    return out.getvalue()


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_images_of_one_request_share_a_decoded_pixel_budget(image_server):
    """Three black 6000x4000 PNGs (each under the per-image limit, 72 M pixels together, a
    ~100 KB body) are refused from their headers, naming the image that crossed the 64 M
    budget, before any pixel is decoded: the server's peak memory does not move."""
    big = _png(6000, 4000)
    peak = _peak_rss_mb(image_server.proc.pid)
    b64 = base64.b64encode(big).decode()
    r = image_server.request("POST", "/predict", {"images": [b64] * 3})
    assert r.status == 413, r.body
    detail = r.json()["detail"]
    assert "images[2]" in detail and "72,000,000" in detail and "64,000,000" in detail, detail

    boundary = "tkboundary"
    form = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="{i}.png"'
        f"\r\nContent-Type: image/png\r\n\r\n".encode() + big + b"\r\n" for i in range(3)
    ) + f"--{boundary}--\r\n".encode()
    r = image_server.request("POST", "/predict", form,
                             {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert r.status == 413 and "file 3" in r.json()["detail"], r.body
    assert _peak_rss_mb(image_server.proc.pid) - peak < 50  # decoding one would take 72 MB+

    small = base64.b64encode(_png(64, 48)).decode()
    ok = image_server.request("POST", "/predict", {"images": [small] * 3})
    assert ok.status == 200 and len(ok.json()["predictions"]) == 3
    meta = image_server.request("GET", "/metadata").json()
    assert meta["limits"]["max_request_pixels"] == 64_000_000


# -- 15: disconnects, docs, credentials ------------------------------------------------------
@pytest.fixture(scope="module")
def keyed():
    server = start_fake_server(key=API_KEY)
    yield server
    assert server.stop() == 0


def test_a_client_that_disconnects_mid_body_is_one_log_line(keyed):
    offset = len(keyed.output())
    for _ in range(3):
        with _connect(keyed.port) as sock:
            sock.send(HEAD + f"X-API-Key: {API_KEY}\r\nContent-Length: 5000\r\n\r\n".encode()
                      + b'{"texts": ["half a body')
            time.sleep(0.2)  # the app is reading the body when the client goes
    log = _wait_for_log(keyed, "client disconnected", offset)
    time.sleep(0.5)  # and nothing more is coming
    log = keyed.output()[offset:]
    lines = [line for line in log.splitlines() if "client disconnected" in line]
    assert len(lines) == 3 and "POST /predict" in lines[0], log
    assert "Traceback" not in log and "Exception in ASGI" not in log, log
    assert keyed.predict(["still serving"]).status == 200


def test_docs_and_schema_need_the_key_when_one_is_set(keyed):
    for path in ("/docs", "/redoc", "/openapi.json"):
        r = keyed.request("GET", path, auth=False)
        assert r.status == 401, (path, r.status)
        assert b"yes" not in r.body  # no label leaks out
        assert keyed.request("GET", path).status == 200, path
    schema = keyed.request("GET", "/openapi.json").json()
    assert "/predict" in schema["paths"] and "no, yes" in schema["info"]["description"]
    docs = keyed.request("GET", "/docs", headers={"Authorization": f"Bearer {API_KEY}"},
                         auth=False)
    assert docs.status == 200 and b"swagger" in docs.body.lower()


def test_docs_stay_open_without_a_key(image_server):
    assert image_server.request("GET", "/docs").status == 200
    assert "/predict" in image_server.request("GET", "/openapi.json").json()["paths"]


@pytest.mark.parametrize("headers, status", [
    ({"X-API-Key": "", "Authorization": f"Bearer {API_KEY}"}, 200),
    ({"X-API-Key": "wrong", "Authorization": f"Bearer {API_KEY}"}, 200),
    ({"X-API-Key": API_KEY, "Authorization": "Bearer wrong"}, 200),
    ({"X-API-Key": API_KEY, "Authorization": ""}, 200),
    ({"X-API-Key": "  ", "Authorization": f"bearer {API_KEY}"}, 200),
    ({"X-API-Key": "", "Authorization": "Bearer "}, 401),
    ({"X-API-Key": "wrong", "Authorization": "Bearer wrong"}, 401),
    ({"Authorization": f"Basic {API_KEY}"}, 401),
    ({"X-API-Key": API_KEY[:-1]}, 401),
])
def test_either_credential_may_carry_the_key(keyed, headers, status):
    r = keyed.predict(["hi"], auth=False, headers=headers)
    assert r.status == status, (headers, r.body)
    if status == 401:
        assert "API key" in r.json()["detail"] and r.headers["www-authenticate"] == "Bearer"


def test_raw_http_client_still_gets_keep_alive(keyed):
    """The read deadlines do not cut a keep-alive connection that sends its requests at once."""
    conn = http.client.HTTPConnection("127.0.0.1", keyed.port, timeout=10)
    try:
        for i in range(5):
            conn.request("POST", "/predict", json.dumps({"texts": [f"t{i}"]}),
                         {"Content-Type": "application/json", "X-API-Key": API_KEY})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.read().startswith(b'{"predictions"')
    finally:
        conn.close()
