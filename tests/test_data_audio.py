"""transferkit.data for audio: folders and tables of clips, validation, splits, budgets, and
the clip pipeline (mono mix-down, resampling, fixed length).

Every test writes its own small clips under ``tmp_path`` with soundfile (tone bursts plus
noise, distinct per seed), or copies a few clips of the shared keywords_espeak set there, and
asserts exact rows, labels, origins, issue kinds and sample values.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import DATA
from PIL import Image

from transferkit.data import (
    AUDIO,
    DataReport,
    Examples,
    load_data,
    read_source,
    validate_examples,
)
from transferkit.data.audio import (
    MAX_CLIP_SECONDS,
    SILENCE_RMS,
    Clip,
    audio_problem,
    fix_length,
    load_clip,
)
from transferkit.data.examples import ISSUE_NAMES
from transferkit.data.tables import other_columns
from transferkit.errors import DataError
from transferkit.pretrain.corpus import read_corpus

KEYWORDS = DATA / "keywords_espeak"
RATE = 16000


# --------------------------------------------------------------------------- helpers


def tone(path: Path, seed: int, seconds: float = 0.25, rate: int = RATE) -> Path:
    """A tone burst (frequency set by ``seed``) plus a little noise: distinct bytes per seed."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * (200 + 37 * seed) * t) + 0.01 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x.astype(np.float32), rate)
    return path


def clip_tree(root: Path, counts: dict[str, int], suffixes=(".wav", ".flac", ".ogg"),
              seed: int = 0) -> Path:
    for c, (cls, n) in enumerate(counts.items()):
        for i in range(n):
            tone(root / cls / f"{cls}{i}{suffixes[i % len(suffixes)]}", seed + 100 * c + i)
    return root


def copy_keywords(root: Path, split: str, words: list[str], n: int) -> list[Path]:
    out = []
    for w in words:
        (root / split / w).mkdir(parents=True, exist_ok=True)
        for f in sorted((KEYWORDS / split / w).glob("*.flac"))[:n]:
            out.append(Path(shutil.copy(f, root / split / w / f.name)))
    return out


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.asarray(x, np.float64) ** 2)))


# --------------------------------------------------------------------------- folders


def test_class_folder_is_audio_with_paths_labels_and_origins(tmp_path):
    root = clip_tree(tmp_path / "kw", {"no": 3, "yes": 4})
    ex = read_source(root)["all"]
    assert ex.modality == AUDIO
    assert [p.name for p in ex.inputs] == ["no0.wav", "no1.flac", "no2.ogg",
                                           "yes0.wav", "yes1.flac", "yes2.ogg", "yes3.wav"]
    assert all(isinstance(p, Path) for p in ex.inputs)
    assert ex.labels == ["no"] * 3 + ["yes"] * 4
    assert ex.origins == [str(p) for p in ex.inputs] and ex.source == str(root)


def test_split_folders_of_real_keyword_clips(tmp_path):
    root = tmp_path / "kw"
    train = copy_keywords(root, "train", ["go", "stop", "yes"], 4)
    test = copy_keywords(root, "test", ["go", "stop", "yes"], 2)
    data = load_data(root, strict=True)  # real clips: no issue at all
    assert data.modality == AUDIO and data.classes == ["go", "stop", "yes"]
    assert data.train.inputs == train and data.test.inputs == test
    assert data.test.labels == ["go", "go", "stop", "stop", "yes", "yes"]
    assert data.report.issues == []
    assert load_clip(test[0], RATE).shape == (RATE,)  # 1 s at 16 kHz, as shipped
    assert load_clip(test[0], 8000, clip_seconds=0.5).shape == (4000,)


def test_loose_folder_reads_unlabelled_and_is_refused_for_training(tmp_path):
    loose = tmp_path / "loose"
    for i in range(3):
        tone(loose / f"c{i}.flac", i)
    (loose / "notes.txt").write_text("not a clip")
    ex = read_source(loose, require_labels=False)["all"]
    assert ex.modality == AUDIO and ex.labels is None
    assert [p.name for p in ex.inputs] == ["c0.flac", "c1.flac", "c2.flac"]
    with pytest.raises(DataError) as err:
        load_data(loose)
    assert str(loose) in str(err.value) and "<class>/<clip>.wav" in str(err.value)


def test_folder_mixing_images_and_audio_is_an_error_naming_it(tmp_path):
    root = clip_tree(tmp_path / "mixed", {"a": 2, "b": 2})
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "b" / "photo.png")
    with pytest.raises(DataError) as err:
        read_source(root)
    msg = str(err.value)
    assert msg.startswith(f"{root}: holds both images")
    assert str(root / "b" / "photo.png") in msg and str(root / "a" / "a0.wav") in msg
    # across split folders too: one dataset is one kind
    split = tmp_path / "split"
    clip_tree(split / "train", {"a": 2, "b": 2})
    (split / "test" / "a").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(split / "test" / "a" / "x.jpg")
    with pytest.raises(DataError, match="holds both images"):
        load_data(split)


# --------------------------------------------------------------------------- tables


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_table_with_a_path_column_is_audio_resolved_against_its_folder(tmp_path, suffix,
                                                                      monkeypatch):
    data_dir = tmp_path / "set"
    clips = [tone(data_dir / "clips" / f"{i}.flac", i) for i in range(6)]
    absolute = tone(tmp_path / "elsewhere" / "abs.wav", 99)
    frame = pd.DataFrame({
        "id": ["a", "b", "c", "d", "e", "f", "g", "h"],
        "file": [f"clips/{i}.flac" for i in range(6)] + [str(absolute), "clips/missing.wav"],
        "label": ["x", "y"] * 4,
    })
    table = data_dir / f"meta{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(table, index=False)
    elif suffix == ".jsonl":
        frame.to_json(table, orient="records", lines=True)
    else:
        frame.to_csv(table, sep="\t" if suffix == ".tsv" else ",", index=False)
    monkeypatch.chdir(tmp_path / "elsewhere")  # relative paths follow the table, not the cwd

    ex = read_source(table)["all"]
    assert ex.modality == AUDIO
    assert ex.inputs == [*clips, absolute, data_dir / "clips" / "missing.wav"]

    report = DataReport()
    kept = validate_examples(ex, report)
    assert kept.inputs == [*clips, absolute]
    [issue] = report.issues
    row = "row 8" if suffix == ".parquet" else "line 9" if suffix != ".jsonl" else "line 8"
    assert (issue.kind, issue.origin) == ("bad_audio", f"meta{suffix} {row}")
    assert issue.detail == f"{data_dir / 'clips' / 'missing.wav'}: no such file"
    assert list(other_columns(table, None, None)["id"]) == list("abcdefgh")


def test_keyword_manifest_jsonl_and_explicit_path_column(tmp_path):
    copied = copy_keywords(tmp_path, "train", ["up", "down"], 3)
    rows = [json.loads(line) for line in (KEYWORDS / "clips.jsonl").read_text().splitlines()]
    wanted = {p.relative_to(tmp_path).as_posix() for p in copied}
    rows = [r for r in rows if r["file"] in wanted]
    assert len(rows) == 6
    manifest = tmp_path / "clips.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ex = read_source(manifest)["all"]  # "file" is guessed; speaker, snr_db are other columns
    assert ex.modality == AUDIO and sorted(ex.inputs) == sorted(copied)
    assert sorted(ex.labels) == ["down"] * 3 + ["up"] * 3
    # an input column of any name, given as --text-column
    renamed = tmp_path / "renamed.csv"
    pd.DataFrame({"recording": [r["file"] for r in rows],
                  "label": [r["label"] for r in rows]}).to_csv(renamed, index=False)
    assert read_source(renamed, text_column="recording")["all"].modality == AUDIO


def test_path_column_not_of_audio_files_is_not_guessed(tmp_path):
    table = tmp_path / "docs.csv"
    pd.DataFrame({"path": ["a.txt", "b.pdf"], "label": ["x", "y"]}).to_csv(table, index=False)
    with pytest.raises(DataError) as err:
        read_source(table)
    assert "docs.csv: cannot tell which column holds the text (or the audio file paths)" \
        in str(err.value) and "--text-column" in str(err.value)
    # a text table stays text even when a text mentions a file
    texts = tmp_path / "texts.csv"
    pd.DataFrame({"text": ["play song.wav now", "hello", "stop"],
                  "label": ["a", "b", "a"]}).to_csv(texts, index=False)
    assert read_source(texts)["all"].modality == "text"


# --------------------------------------------------------------------------- clip pipeline


def test_load_clip_mixes_stereo_down_and_resamples_with_an_anti_alias_filter(tmp_path):
    rate = 44100
    t = np.arange(rate) / rate
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, np.zeros_like(left)], axis=1).astype(np.float32), rate,
             subtype="FLOAT")
    mono = load_clip(path, RATE, clip_seconds=None)
    assert mono.dtype == np.float32 and mono.shape == (RATE,)
    assert dominant_hz(mono, RATE) == pytest.approx(440, abs=2)
    assert rms(mono[1000:-1000]) == pytest.approx(0.25 / np.sqrt(2), rel=0.01)  # (L + R) / 2
    # 10 kHz is above the new Nyquist (8 kHz): a real resampler removes it, decimation
    # would fold it to 6 kHz at full strength
    high = Clip((0.5 * np.sin(2 * np.pi * 10000 * t)).astype(np.float32), rate)
    assert rms(load_clip(high, RATE, clip_seconds=None)) < 0.005


def test_fix_length_keeps_the_loud_part_and_centres_short_clips():
    x = np.zeros(3 * RATE, np.float32)
    burst = slice(int(2.0 * RATE), int(2.4 * RATE))
    x[burst] = 0.5
    out = load_clip(Clip(x, RATE), RATE, clip_seconds=1.0)
    assert out.shape == (RATE,)
    assert float(np.sum(out ** 2)) == pytest.approx(float(np.sum(x[burst] ** 2)))
    short = fix_length(np.ones(100, np.float32), 300)
    assert short.shape == (300,) and short[:100].sum() == 0 and short[100:200].sum() == 100
    assert short[200:].sum() == 0


# --------------------------------------------------------------------------- validation


@pytest.fixture
def hostile(tmp_path) -> tuple[Path, dict[str, Path]]:
    """root/<a|b>/ with 8 good clips each and one of every kind of bad file."""
    root = clip_tree(tmp_path / "kw", {"a": 8, "b": 8}, suffixes=(".wav", ".flac"))
    good = (tone(tmp_path / "src.flac", 500, seconds=1.0)).read_bytes()
    bad = {
        "truncated": root / "a" / "truncated.flac",
        "text": root / "a" / "readme.wav",
        "empty": root / "b" / "empty.wav",
        "silent": root / "b" / "silent.wav",
        "long": root / "b" / "long.flac",
    }
    bad["truncated"].write_bytes(good[: len(good) // 2])
    bad["text"].write_text("this is a text file, not a recording\n" * 20)
    sf.write(bad["empty"], np.zeros(0, np.float32), RATE)
    sf.write(bad["silent"], np.zeros(RATE, np.float32), RATE)
    long_rate = 8000
    sf.write(bad["long"], (0.1 * np.sin(np.arange(61 * long_rate) / 3.0)).astype(np.float32),
             long_rate)
    return root, bad


def test_each_bad_audio_kind_is_named_with_its_file(hostile, monkeypatch):
    root, bad = hostile
    decoded = []
    real_read = sf.read
    monkeypatch.setattr(sf, "read", lambda f, *a, **k: decoded.append(Path(f)) or
                        real_read(f, *a, **k))
    data = load_data(root, max_bad_fraction=0.5)

    found = {Path(i.origin): (i.kind, i.detail) for i in data.report.issues}
    assert found[bad["truncated"]][0] == "bad_audio"
    assert "truncated or corrupt" in found[bad["truncated"]][1]
    assert found[bad["text"]][0] == "bad_audio"
    assert found[bad["text"]][1].startswith("not an audio file (")
    assert found[bad["empty"]] == ("bad_audio", "empty (0 samples)")
    assert found[bad["silent"]][0] == "silent_audio"
    assert found[bad["long"]] == ("long_audio", f"61.0 s, over the {MAX_CLIP_SECONDS:.0f} s limit")
    assert set(found) == set(bad.values())
    assert bad["long"] not in decoded  # refused from its header, never decoded
    used = set(data.train.inputs) | set(data.test.inputs)
    assert len(used) == 16 and not used & set(bad.values())
    lines = " ".join(data.report.lines())
    for kind in ("bad_audio", "silent_audio", "long_audio"):
        assert ISSUE_NAMES[kind] in lines
    assert str(bad["long"]) in lines


def test_bad_audio_strict_and_max_bad_fraction(hostile):
    root, bad = hostile
    with pytest.raises(DataError) as err:
        load_data(root, strict=True, max_bad_fraction=0.5)
    msg = str(err.value)
    assert "--strict" in msg and all(str(p) in msg for p in bad.values())
    with pytest.raises(DataError) as err:  # 5 bad of 21 rows is 24% > 20%
        load_data(root, max_bad_fraction=0.2)
    assert "5 of 21 rows are unusable" in str(err.value)
    assert len(load_data(root, max_bad_fraction=0.25).report.issues) == 5


def test_truncated_wav_and_ogg_headers_are_caught(tmp_path):
    for suffix in (".wav", ".ogg"):
        whole = tone(tmp_path / f"whole{suffix}", 3, seconds=1.0).read_bytes()
        cut = tmp_path / f"cut{suffix}"
        cut.write_bytes(whole[: len(whole) // 2])
        assert audio_problem(cut) == ("bad_audio",
                                      f"{cut}: truncated (the file ends before its audio does)")
        assert audio_problem(tmp_path / f"whole{suffix}") is None


def test_in_memory_clips_are_validated_too():
    t = np.arange(RATE) / RATE
    ok = Clip((0.2 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), RATE, "ok")
    quiet = Clip(np.full(RATE, SILENCE_RMS / 2, np.float32), RATE, "quiet")
    nan = Clip(np.array([0.1, np.nan], np.float32), RATE, "nan")
    long = Clip(np.full(int(61 * 100), 0.1, np.float32), 100, "long")
    ex = Examples([ok, quiet, nan, long], None, ["r1", "r2", "r3", "r4"], AUDIO, "mem")
    report = DataReport()
    assert validate_examples(ex, report, require_labels=False).inputs == [ok]
    assert [(i.kind, i.origin) for i in report.issues] == [
        ("silent_audio", "r2"), ("bad_audio", "r3"), ("long_audio", "r4")]
    assert "NaN" in report.issues[1].detail


# --------------------------------------------------------------------------- leakage, splits


def test_exact_duplicate_clip_in_test_is_leakage(tmp_path):
    root = tmp_path / "kw"
    clip_tree(root / "train", {"a": 4, "b": 4})
    clip_tree(root / "test", {"a": 2, "b": 2}, seed=50)
    copy = root / "test" / "b" / "copied.wav"
    shutil.copy(root / "train" / "a" / "a0.wav", copy)
    # same sound, other bytes (re-encoded as FLAC): not an exact duplicate
    samples, rate = sf.read(root / "train" / "a" / "a0.wav")
    sf.write(root / "test" / "a" / "reencoded.flac", samples, rate)
    data = load_data(root)
    assert [(i.kind, i.origin) for i in data.report.issues] == [("leakage", str(copy))]
    assert copy not in data.test.inputs and len(data.test) == 5


def test_stratified_split_and_nested_label_budgets(tmp_path):
    root = clip_tree(tmp_path / "kw", {"a": 10, "b": 10, "c": 5})
    data = load_data(root, test_size=0.2, seed=3)
    assert sorted(data.test.labels) == ["a", "a", "b", "b", "c"]
    assert not set(data.train.inputs) & set(data.test.inputs)
    small = load_data(root, test_size=0.2, seed=3, per_class=2)
    big = load_data(root, test_size=0.2, seed=3, per_class=4)
    assert sorted(small.train.labels) == ["a", "a", "b", "b", "c", "c"]
    assert sorted(big.train.labels) == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert set(small.train.inputs) < set(big.train.inputs)  # nested
    assert small.test.inputs == data.test.inputs  # the budget never touches the test split
    other = load_data(root, test_size=0.2, seed=4, per_class=2)
    assert set(other.train.inputs) != set(small.train.inputs)


def test_fingerprint_follows_the_file_bytes(tmp_path):
    root = clip_tree(tmp_path / "kw", {"a": 2, "b": 2})
    before = read_source(root)["all"].fingerprint()
    tone(root / "a" / "a0.wav", 77)
    assert read_source(root)["all"].fingerprint() != before


def test_pretraining_corpus_names_audio(tmp_path):
    root = clip_tree(tmp_path / "kw", {"a": 3, "b": 3})
    sf.write(root / "a" / "hush.wav", np.zeros(RATE, np.float32), RATE)
    items, report = read_corpus([str(root)], AUDIO)
    assert len(items) == 6 and report["dropped_empty"] == 1
    with pytest.raises(DataError) as err:
        read_corpus([str(root)], "text")
    assert "holds audio data" in str(err.value) and "--modality audio" in str(err.value)
