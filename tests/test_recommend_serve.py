"""``transferkit serve`` on a recommend run, as users run it: a real server process."""

from __future__ import annotations

import pytest
from recommend_helpers import tastes_run
from serve_helpers import API_KEY, start_server

from transferkit.recommend.recommender import Recommender


@pytest.fixture(scope="module")
def server():
    run = tastes_run()
    srv = start_server(run.out, key=API_KEY)
    yield srv
    assert srv.stop() == 0  # SIGTERM: a clean exit


def test_post_recommend_answers_what_predict_answers(server):
    rec = Recommender.load(server.run_dir)
    one = server.request("POST", "/recommend", {"user": "u0", "k": 3})
    assert one.status == 200, one.body
    body = one.json()
    assert body["model"] == "hybrid"
    assert body["recommendations"][0]["items"] == rec.recommend("u0", k=3)
    many = server.request("POST", "/recommend", {"users": ["u1", "u2"], "model": "content"})
    assert [r["user"] for r in many.json()["recommendations"]] == ["u1", "u2"]
    assert many.json()["recommendations"][1]["items"] == rec.recommend("u2", 10, "content")
    meta = server.request("GET", "/metadata").json()
    assert meta["kind"] == "recommender" and meta["default_model"] == "hybrid"


def test_bad_requests_get_a_message_not_a_traceback(server):
    unknown = server.request("POST", "/recommend", {"user": "nobody"})
    assert unknown.status == 404 and "Unknown user 'nobody'" in unknown.json()["detail"]
    both = server.request("POST", "/recommend", {"user": "u0", "users": ["u1"]})
    assert both.status == 422 and "exactly one of" in both.json()["detail"]
    bad_k = server.request("POST", "/recommend", {"user": "u0", "k": 0})
    assert bad_k.status == 422 and "'k'" in bad_k.json()["detail"]
    model = server.request("POST", "/recommend", {"user": "u0", "model": "als2"})
    assert model.status == 422 and "did you mean 'als'" in model.json()["detail"]
    assert server.request("POST", "/recommend", {"user": "u0"}, auth=False).status == 401
