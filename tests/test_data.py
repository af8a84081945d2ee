"""transferkit.data: reading every supported source, row validation, splits and label budgets.

Every test builds its own small files under ``tmp_path`` (or reads a small, fixed part of the
shared data sets) and asserts the exact rows, labels, origins and report entries that come
back, because the data layer's contract is "skip bad rows, count them, and name where they
are", and a silent change in any of those is a wrong run later on.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import pytest
from conftest import DATA
from PIL import Image

from transferkit.data import IMAGE, TEXT, Examples, issue_summary, load_data, read_source
from transferkit.errors import DataError

SHARED = DATA
TABLE_FORMATS = [".csv", ".tsv", ".jsonl", ".parquet"]

datasets.disable_progress_bars()


# --------------------------------------------------------------------------- helpers


def write_table(path: Path, frame: pd.DataFrame) -> Path:
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    elif suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:  # pragma: no cover - helper misuse
        raise AssertionError(suffix)
    return path


def labelled_csv(path: Path, counts: dict[str, int], prefix: str = "") -> Path:
    """A CSV with ``counts[label]`` distinct texts per label, classes interleaved."""
    texts, labels = [], []
    for label, n in counts.items():
        texts += [f"{prefix}{label} example {i}" for i in range(n)]
        labels += [label] * n
    pd.DataFrame({"text": texts, "label": labels}).to_csv(path, index=False)
    return path


def random_png(path: Path, seed: int, size: int = 16) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def hf_features() -> datasets.Features:
    return datasets.Features({
        "sentence": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["neg", "pos"]),
    })


def count(labels: list[str] | None, label: str) -> int:
    assert labels is not None
    return labels.count(label)


# --------------------------------------------------------------------------- tables

TRICKY_TEXTS = ["NA", "null", "0123", 'he said "hi", then left', "N/A", "nan", "True", "great"]
TRICKY_LABELS = ["pos", "neg", "pos", "neg", "pos", "neg", "pos", "neg"]


@pytest.mark.parametrize("suffix", TABLE_FORMATS)
def test_table_formats_autodetect_columns_and_keep_tricky_texts(tmp_path, suffix):
    frame = pd.DataFrame({"id": range(8), "text": TRICKY_TEXTS, "label": TRICKY_LABELS})
    path = write_table(tmp_path / f"train{suffix}", frame)

    splits = read_source(path)

    assert list(splits) == ["all"]
    ex = splits["all"]
    assert ex.modality == TEXT
    assert ex.source == path.name
    assert ex.inputs == TRICKY_TEXTS  # "NA", "null", "0123" stay strings, exactly as written
    assert all(isinstance(t, str) for t in ex.inputs)
    assert ex.labels == TRICKY_LABELS
    # where an editor shows each row: the line of a text file, the row of a Parquet table
    where = [f"row {i}" for i in range(1, 9)] if suffix == ".parquet" else \
        [f"line {i + (suffix != '.jsonl')}" for i in range(1, 9)]
    assert ex.origins == [f"train{suffix} {w}" for w in where]


@pytest.mark.parametrize("suffix", TABLE_FORMATS)
def test_table_formats_explicit_columns(tmp_path, suffix):
    frame = pd.DataFrame({
        "text": ["decoy"] * 4,  # would be auto-detected; the explicit choice must win
        "review": ["loved it", "hated it", "NA", "0123"],
        "sentiment": ["good", "bad", "good", "bad"],
    })
    path = write_table(tmp_path / f"reviews{suffix}", frame)

    ex = read_source(path, text_column="review", label_column="sentiment")["all"]

    assert ex.inputs == ["loved it", "hated it", "NA", "0123"]
    assert ex.labels == ["good", "bad", "good", "bad"]


@pytest.mark.parametrize("suffix", TABLE_FORMATS)
def test_wrong_column_name_lists_available_columns(tmp_path, suffix):
    frame = pd.DataFrame({"review": ["a", "b"], "sentiment": ["x", "y"]})
    path = write_table(tmp_path / f"reviews{suffix}", frame)

    with pytest.raises(DataError) as err:
        read_source(path, text_column="review", label_column="stars")
    msg = str(err.value)
    assert path.name in msg
    assert "'stars'" in msg
    assert "review, sentiment" in msg
    assert "--label-column" in msg

    with pytest.raises(DataError) as err:
        read_source(path, text_column="body")
    assert "'body'" in str(err.value) and "review, sentiment" in str(err.value)
    assert "--text-column" in str(err.value)


def test_label_column_that_cannot_be_guessed_asks_for_it(tmp_path):
    path = write_table(tmp_path / "r.csv", pd.DataFrame({"review": ["a"], "sentiment": ["x"]}))
    with pytest.raises(DataError) as err:
        read_source(path)
    msg = str(err.value)
    assert "r.csv" in msg and "review, sentiment" in msg and "--label-column" in msg


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_integer_labels_with_a_missing_value_stay_integers(tmp_path, suffix):
    # A missing value turns an int column into floats; "1.0" would never match a test "1".
    frame = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [1, None, 0, 1]})
    path = write_table(tmp_path / f"t{suffix}", frame)
    assert read_source(path)["all"].labels == ["1", None, "0", "1"]


def test_jsonl_null_is_missing_but_string_null_is_text(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"text": "null", "label": "a"}, {"text": None, "label": "b"},
            {"text": "", "label": "c"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    ex = read_source(path)["all"]
    assert ex.inputs == ["null", None, ""]
    assert ex.labels == ["a", "b", "c"]


def test_txt_is_one_text_per_line_without_labels(tmp_path):
    path = tmp_path / "unlabelled.txt"
    path.write_text("first line\nNA\n0123\n", encoding="utf-8")

    ex = read_source(path, require_labels=False)["all"]
    assert ex.inputs == ["first line", "NA", "0123"]
    assert ex.labels is None
    assert ex.origins == ["unlabelled.txt line 1", "unlabelled.txt line 2", "unlabelled.txt line 3"]

    with pytest.raises(DataError) as err:  # training needs labels; a .txt has none
        load_data(path)
    assert "unlabelled.txt" in str(err.value) and "label" in str(err.value)


def test_header_only_csv_is_an_error(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataError, match="empty.csv: the file has no rows"):
        read_source(path)


def test_non_utf8_csv_is_an_error_naming_the_file(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(DataError) as err:
        read_source(path)
    assert "latin1.csv" in str(err.value) and "UTF-8" in str(err.value)


def test_real_sms_spam_train_and_test(tmp_path):
    ex = read_source(SHARED / "sms_spam.train.csv")["all"]
    assert len(ex) == 4127
    assert count(ex.labels, "ham") == 3614 and count(ex.labels, "spam") == 513

    data = load_data(SHARED / "sms_spam.train.csv", test=SHARED / "sms_spam.test.csv",
                     per_class=8, seed=0)
    assert data.classes == ["ham", "spam"]
    assert len(data.test) == 1032  # the shared split is already clean: nothing dropped
    assert data.report.counts() == {}
    assert len(data.train) == 16
    assert data.summary()["train"]["per_class"] == {"ham": 8, "spam": 8}


# --------------------------------------------------------------------------- Hugging Face


def test_hf_dataset_folder_maps_classlabel_ints_to_names(tmp_path):
    folder = tmp_path / "hf_ds"
    datasets.Dataset.from_dict(
        {"sentence": ["good", "bad", "fine", "unlabelled"], "label": [1, 0, 1, -1]},
        features=hf_features(),
    ).save_to_disk(str(folder))

    splits = read_source(folder)

    assert list(splits) == ["all"]
    ex = splits["all"]
    assert ex.inputs == ["good", "bad", "fine", "unlabelled"]
    # -1 is ClassLabel's "no label": it must be missing, not the last class name
    assert ex.labels == ["pos", "neg", "pos", None]
    assert ex.origins == [f"{folder}[all] row {i}" for i in range(4)]


def test_hf_dataset_dict_splits_are_used(tmp_path):
    folder = tmp_path / "hf_dict"
    train_texts = [f"train text {i}" for i in range(10)]
    test_texts = [f"test text {i}" for i in range(4)]
    datasets.DatasetDict({
        "train": datasets.Dataset.from_dict(
            {"sentence": train_texts, "label": [0, 1] * 5}, features=hf_features()),
        "test": datasets.Dataset.from_dict(
            {"sentence": test_texts, "label": [1, 1, 0, 0]}, features=hf_features()),
    }).save_to_disk(str(folder))

    data = load_data(folder)

    assert data.classes == ["neg", "pos"]
    assert data.train.inputs == train_texts  # nothing held out of train
    assert data.train.labels == ["neg", "pos"] * 5
    assert data.test.inputs == test_texts
    assert data.test.labels == ["pos", "pos", "neg", "neg"]
    assert data.test.origins[0] == f"{folder}[test] row 0"
    assert not any("no test set given" in n for n in data.report.notes)


def test_hf_dataset_dict_validation_split_becomes_valid(tmp_path):
    folder = tmp_path / "hf_dict"
    make = lambda texts, labels: datasets.Dataset.from_dict(  # noqa: E731
        {"sentence": texts, "label": labels}, features=hf_features())
    datasets.DatasetDict({
        "train": make([f"tr {i}" for i in range(6)], [0, 1] * 3),
        "validation": make(["va 0", "va 1"], [0, 1]),
        "test": make(["te 0", "te 1"], [1, 0]),
    }).save_to_disk(str(folder))

    assert sorted(read_source(folder)) == ["test", "train", "valid"]
    data = load_data(folder)
    assert data.valid is not None
    assert data.valid.inputs == ["va 0", "va 1"] and data.valid.labels == ["neg", "pos"]
    assert data.test.inputs == ["te 0", "te 1"]


def test_hf_folder_wrong_column_lists_columns(tmp_path):
    folder = tmp_path / "hf_ds"
    datasets.Dataset.from_dict({"sentence": ["a"], "label": [0]},
                               features=hf_features()).save_to_disk(str(folder))
    with pytest.raises(DataError) as err:
        read_source(folder, label_column="stars")
    msg = str(err.value)
    assert str(folder) in msg and "'stars'" in msg and "sentence, label" in msg


# --------------------------------------------------------------------------- images


@pytest.fixture
def image_folder(tmp_path) -> tuple[Path, Path, Path]:
    """root/<cat|dog>/ with 6 distinct valid PNGs each, one garbage and one truncated PNG."""
    root = tmp_path / "pets"
    for c, cls in enumerate(["cat", "dog"]):
        (root / cls).mkdir(parents=True)
        for i in range(6):
            random_png(root / cls / f"{i}.png", seed=100 * c + i)
    garbage = root / "cat" / "garbage.png"
    garbage.write_bytes(b"this is not a png at all")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(7).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buf, format="PNG")
    truncated = root / "dog" / "truncated.png"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    return root, garbage, truncated


def test_image_folder_reads_classes_from_folder_names(image_folder):
    root, garbage, truncated = image_folder
    ex = read_source(root)["all"]
    assert ex.modality == IMAGE
    assert len(ex) == 14
    assert count(ex.labels, "cat") == 7 and count(ex.labels, "dog") == 7
    assert garbage in ex.inputs and truncated in ex.inputs  # filtered later, by validation
    assert ex.origins == [str(p) for p in ex.inputs]


def test_bad_images_are_skipped_and_reported_with_their_path(image_folder):
    root, garbage, truncated = image_folder

    data = load_data(root, max_bad_fraction=0.5)

    assert data.report.counts()["bad_image"] == 2
    bad = {i.origin: i.detail for i in data.report.issues if i.kind == "bad_image"}
    assert set(bad) == {str(garbage), str(truncated)}
    assert "truncated" in bad[str(truncated)]
    used = set(data.train.inputs) | set(data.test.inputs)
    assert len(used) == 12
    assert garbage not in used and truncated not in used
    assert data.classes == ["cat", "dog"]
    assert str(garbage) in " ".join(data.report.lines())


def test_bad_images_strict_raises_naming_the_file(image_folder):
    root, garbage, truncated = image_folder
    with pytest.raises(DataError) as err:
        load_data(root, strict=True)
    msg = str(err.value)
    assert str(garbage) in msg and str(truncated) in msg
    assert "--strict" in msg


def test_too_many_bad_images_fail_the_run(image_folder):
    root, garbage, _ = image_folder
    for i in range(2):  # 4 bad of 16 = 25% > 20%
        (root / "cat" / f"broken{i}.png").write_bytes(b"\x89PNG nope")
    with pytest.raises(DataError) as err:
        load_data(root, max_bad_fraction=0.2)
    msg = str(err.value)
    assert "4 of 16 rows are unusable" in msg
    assert str(garbage) in msg
    assert len(load_data(root, max_bad_fraction=0.3).report.issues) == 4


def test_image_folder_with_split_folders(tmp_path):
    root = tmp_path / "imgs"
    for s, (split, n) in enumerate((("train", 4), ("test", 2))):
        for c, cls in enumerate(["a", "b"]):
            (root / split / cls).mkdir(parents=True)
            for i in range(n):
                random_png(root / split / cls / f"{i}.png", seed=1000 * s + 100 * c + i)
    data = load_data(root)
    assert len(data.train) == 8 and len(data.test) == 4
    assert all("/test/" in str(p) for p in data.test.inputs)
    assert data.test.labels == ["a", "a", "b", "b"]


def test_folder_without_class_folders_is_an_error(tmp_path):
    (tmp_path / "flat").mkdir()
    random_png(tmp_path / "flat" / "x.png", seed=1)
    with pytest.raises(DataError) as err:
        load_data(tmp_path / "flat")
    assert str(tmp_path / "flat") in str(err.value) and "<class>" in str(err.value)


# --------------------------------------------------------------------------- npz


def test_npz_with_classes_maps_labels_to_names(tmp_path):
    images = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6)
    path = tmp_path / "imgs.npz"
    np.savez(path, images=images, labels=np.array([1, 0, 2, 1]),
             classes=np.array(["cat", "dog", "emu"]))

    ex = read_source(path)["all"]

    assert ex.modality == IMAGE
    assert ex.labels == ["dog", "cat", "emu", "dog"]
    assert ex.origins == [f"imgs.npz index {i}" for i in range(4)]
    assert np.array_equal(ex.inputs[2], images[2])


def test_npz_without_classes_uses_label_values(tmp_path):
    path = tmp_path / "imgs.npz"
    np.savez(path, images=np.zeros((3, 4, 4, 3), np.uint8), labels=np.array([7, 3, 7]))
    ex = read_source(path)["all"]
    assert ex.labels == ["7", "3", "7"]
    assert ex.inputs[0].shape == (4, 4, 3)


def test_npz_length_mismatch_is_an_error(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((3, 4, 4), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(DataError) as err:
        read_source(path)
    assert str(path) in str(err.value)
    assert "3 images but 2 labels" in str(err.value)


def test_npz_label_outside_classes_is_an_error(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 2]),
             classes=np.array(["a", "b"]))
    with pytest.raises(DataError, match=r"bad\.npz: label values must index 'classes' \(0\.\.1\)"):
        read_source(path)


def test_npz_missing_images_or_object_arrays_are_errors(tmp_path):
    no_images = tmp_path / "no_images.npz"
    np.savez(no_images, pixels=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]))
    with pytest.raises(DataError, match="no_images.npz: no 'images' array.*pixels"):
        read_source(no_images)

    objects = tmp_path / "objects.npz"
    np.savez(objects, images=np.zeros((2, 4, 4), np.uint8), labels=np.array([0, 1]),
             classes=np.array(["a", "b"], dtype=object))
    with pytest.raises(DataError, match="objects.npz"):
        read_source(objects)


def test_real_fashion_mnist_slice(tmp_path):
    with np.load(SHARED / "fashion_mnist.test.npz") as real:
        images, labels, classes = real["images"][:300], real["labels"][:300], real["classes"]
    assert len(classes) == 10
    path = tmp_path / "fmnist_small.npz"
    np.savez(path, images=images, labels=labels, classes=classes)

    ex = read_source(path)["all"]
    assert ex.labels == [str(classes[i]) for i in labels]
    assert ex.inputs[0].shape == (28, 28)

    data = load_data(path, per_class=5, seed=0)
    assert data.classes == sorted(str(c) for c in classes)
    assert "T-shirt/top" in data.classes and "Ankle boot" in data.classes
    per_class = data.summary()["train"]["per_class"]
    assert set(per_class.values()) == {5}
    assert len(data.test) == 60  # stratified 20% of 300


# --------------------------------------------------------------------------- validation


def write_rows(path: Path, rows: list[tuple[str, str]]) -> Path:
    """Raw CSV lines (no pandas) so that the empty and missing cells are exactly as written."""
    lines = ["text,label"] + [f"{t},{lab}" for t, lab in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def good_rows(n: int, prefix: str) -> list[tuple[str, str]]:
    return [(f"{prefix} text {i}", "ab"[i % 2]) for i in range(n)]


def test_empty_text_and_missing_label_rows_are_skipped_and_named(tmp_path):
    rows = good_rows(2, "train") + [("", "a"), ("   ", "b"), ("no label here", "")]
    rows += good_rows(20, "more")
    train = write_rows(tmp_path / "train.csv", rows)
    test = labelled_csv(tmp_path / "test.csv", {"a": 3, "b": 3}, prefix="test ")

    data = load_data(train, test=test)

    assert data.report.counts() == {"empty_text": 2, "missing_label": 1}
    origins = {i.kind: [] for i in data.report.issues}
    for issue in data.report.issues:
        origins[issue.kind].append(issue.origin)
    assert origins == {"empty_text": ["train.csv line 4", "train.csv line 5"],
                       "missing_label": ["train.csv line 6"]}
    assert len(data.train) == 22
    assert "no label here" not in data.train.inputs
    assert "2 empty or missing text, 1 missing label" == issue_summary(data.report)


def test_unseen_test_label_is_dropped_and_reported(tmp_path):
    train = labelled_csv(tmp_path / "train.csv", {"a": 5, "b": 5})
    test = write_rows(tmp_path / "test.csv",
                      [("t0", "a"), ("t1", "b"), ("t2", "zebra"), ("t3", "a")])

    data = load_data(train, test=test)

    assert data.test.inputs == ["t0", "t1", "t3"]
    issues = [(i.kind, i.origin, i.detail) for i in data.report.issues]
    assert issues == [("unseen_label", "test.csv line 4", "label 'zebra'")]
    assert data.classes == ["a", "b"]


def test_single_class_training_data_is_an_error(tmp_path):
    train = labelled_csv(tmp_path / "train.csv", {"only": 6})
    with pytest.raises(DataError) as err:
        load_data(train)
    msg = str(err.value)
    assert "train.csv" in msg and "at least two classes" in msg and "'only'" in msg


def test_train_test_duplicates_are_removed_from_test_as_leakage(tmp_path):
    train = labelled_csv(tmp_path / "train.csv", {"a": 5, "b": 5})
    test = write_rows(tmp_path / "test.csv", [
        ("fresh text", "a"),
        ("a example 2", "a"),   # exact copy of a training text
        ("A Example 3", "a"),   # differs in case: not an exact duplicate, kept
        ("b example 0", "a"),   # same text, other label: still leakage
        ("other text", "b"),
    ])

    data = load_data(train, test=test)

    assert data.test.inputs == ["fresh text", "A Example 3", "other text"]
    leaks = [i.origin for i in data.report.issues if i.kind == "leakage"]
    assert leaks == ["test.csv line 3", "test.csv line 5"]
    assert len(data.train) == 10  # train is never shrunk by leakage


def test_strict_raises_naming_file_and_row(tmp_path):
    rows = good_rows(10, "train") + [("", "a")]
    train = write_rows(tmp_path / "train.csv", rows)
    test = labelled_csv(tmp_path / "test.csv", {"a": 2, "b": 2}, prefix="test ")

    assert len(load_data(train, test=test).train) == 10  # lenient by default

    with pytest.raises(DataError) as err:
        load_data(train, test=test, strict=True)
    msg = str(err.value)
    assert "train.csv line 12" in msg
    assert "empty or missing text" in msg and "--strict" in msg


def test_strict_also_raises_on_unseen_labels(tmp_path):
    train = labelled_csv(tmp_path / "train.csv", {"a": 3, "b": 3})
    test = write_rows(tmp_path / "test.csv", [("t0", "a"), ("t1", "c")])
    with pytest.raises(DataError, match="test.csv line 3"):
        load_data(train, test=test, strict=True)


def test_more_than_max_bad_fraction_is_an_error(tmp_path):
    rows = good_rows(7, "train") + [("", "a"), ("", "b"), ("x", "")]  # 3 bad of 10
    train = write_rows(tmp_path / "train.csv", rows)
    test = labelled_csv(tmp_path / "test.csv", {"a": 2, "b": 2}, prefix="test ")

    with pytest.raises(DataError) as err:
        load_data(train, test=test, max_bad_fraction=0.2)
    msg = str(err.value)
    assert "train.csv: 3 of 10 rows are unusable" in msg
    assert "train.csv line 9" in msg and "train.csv line 11" in msg

    data = load_data(train, test=test, max_bad_fraction=0.3)  # 30% is allowed
    assert len(data.train) == 7


def test_all_test_rows_unusable_is_an_error(tmp_path):
    train = labelled_csv(tmp_path / "train.csv", {"a": 3, "b": 3})
    test = write_rows(tmp_path / "test.csv", [("t0", "z"), ("t1", "y")])
    with pytest.raises(DataError, match="test.csv: no usable test examples"):
        load_data(train, test=test)


def test_valid_file_is_cleaned_like_test(tmp_path):
    train = labelled_csv(tmp_path / "train.csv", {"a": 5, "b": 5})
    valid = write_rows(tmp_path / "valid.csv",
                       [("v0", "a"), ("a example 1", "a"), ("v2", "q"), ("v3", "b")])
    test = labelled_csv(tmp_path / "test.csv", {"a": 2, "b": 2}, prefix="test ")

    data = load_data(train, valid=valid, test=test)

    assert data.valid is not None
    assert data.valid.inputs == ["v0", "v3"]
    assert data.report.counts() == {"unseen_label": 1, "leakage": 1}


# --------------------------------------------------------------------------- splits


def test_no_test_file_gives_a_stratified_seeded_split(tmp_path):
    train = labelled_csv(tmp_path / "train.csv", {"a": 30, "b": 20})

    data = load_data(train, seed=0, test_size=0.2)

    assert len(data.train) == 40 and len(data.test) == 10
    assert count(data.test.labels, "a") == 6 and count(data.test.labels, "b") == 4
    assert count(data.train.labels, "a") == 24 and count(data.train.labels, "b") == 16
    assert set(data.train.inputs).isdisjoint(data.test.inputs)
    all_texts = set(read_source(train)["all"].inputs)
    assert set(data.train.inputs) | set(data.test.inputs) == all_texts
    assert any("no test set given" in n and "seed 0" in n for n in data.report.notes)
    # the held-out rows keep pointing at the user's file
    assert all(o.startswith("train.csv line ") for o in data.test.origins)

    again = load_data(train, seed=0, test_size=0.2)
    assert again.test.inputs == data.test.inputs and again.train.inputs == data.train.inputs

    other = load_data(train, seed=1, test_size=0.2)
    assert other.test.inputs != data.test.inputs
    assert count(other.test.labels, "a") == 6  # still stratified


def test_split_keeps_singleton_classes_in_train(tmp_path):
    train = labelled_csv(tmp_path / "train.csv", {"a": 10, "b": 10, "rare": 1})
    data = load_data(train)
    assert "rare" in data.train.labels and "rare" not in data.test.labels
    assert any("fewer than 2 examples" in n and "rare" in n for n in data.report.notes)


def test_split_too_small_to_stratify_is_a_data_error(tmp_path):
    train = labelled_csv(tmp_path / "tiny.csv", {"a": 4, "b": 3, "c": 3})  # 2 held out, 3 classes
    with pytest.raises(DataError) as err:
        load_data(train, test_size=0.2)
    assert "tiny.csv" in str(err.value) and "test" in str(err.value)


def test_per_class_budget_is_exact_seeded_and_nested(tmp_path):
    train = labelled_csv(tmp_path / "train.csv", {"a": 40, "b": 40, "c": 40})
    test = labelled_csv(tmp_path / "test.csv", {"a": 2, "b": 2, "c": 2}, prefix="test ")

    def budget(n: int, seed: int) -> Examples:
        return load_data(train, test=test, per_class=n, seed=seed).train

    b8, b32 = budget(8, seed=3), budget(32, seed=3)
    assert {c: count(b8.labels, c) for c in "abc"} == {"a": 8, "b": 8, "c": 8}
    assert {c: count(b32.labels, c) for c in "abc"} == {"a": 32, "b": 32, "c": 32}
    assert set(b8.inputs) < set(b32.inputs)  # nested: same seed, bigger budget adds rows
    assert budget(8, seed=3).inputs == b8.inputs  # seeded
    assert set(budget(8, seed=4).inputs) != set(b8.inputs)
    # labels stay attached to their texts
    assert all(t.startswith(lab) for t, lab in zip(b8.inputs, b8.labels, strict=True))


def test_per_class_budget_after_automatic_split_is_nested(tmp_path):
    train = labelled_csv(tmp_path / "train.csv", {"a": 50, "b": 50})
    d4 = load_data(train, per_class=4, seed=9)
    d16 = load_data(train, per_class=16, seed=9)
    assert d4.test.inputs == d16.test.inputs  # the budget never changes the test split
    assert len(d4.train) == 8 and len(d16.train) == 32
    assert set(d4.train.inputs) < set(d16.train.inputs)


def test_per_class_budget_short_class_keeps_all_and_is_noted(tmp_path):
    train = labelled_csv(tmp_path / "train.csv", {"a": 20, "b": 20, "c": 5})
    test = labelled_csv(tmp_path / "test.csv", {"a": 1, "b": 1, "c": 1}, prefix="test ")

    data = load_data(train, test=test, per_class=8)

    assert {c: count(data.train.labels, c) for c in "abc"} == {"a": 8, "b": 8, "c": 5}
    notes = [n for n in data.report.notes if "--per-class 8" in n]
    assert len(notes) == 1 and "c (5)" in notes[0] and "a (" not in notes[0]


def test_per_class_below_one_is_an_error(tmp_path):
    train = labelled_csv(tmp_path / "train.csv", {"a": 5, "b": 5})
    with pytest.raises(DataError, match="--per-class must be at least 1"):
        load_data(train, per_class=0)


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_tracks_inputs_not_labels():
    def ex(texts: list[str], labels: list[str]) -> Examples:
        return Examples(inputs=texts, labels=labels, origins=[""] * len(texts), modality=TEXT)

    base = ex(["one", "two", "three"], ["a", "b", "a"])
    fp = base.fingerprint()
    assert len(fp) == 64
    assert ex(["one", "two", "three"], ["b", "b", "b"]).fingerprint() == fp
    assert ex(["one", "two", "three!"], ["a", "b", "a"]).fingerprint() != fp
    assert ex(["one", "three", "two"], ["a", "b", "a"]).fingerprint() != fp
    assert ex(["onetwo", "", "three"], ["a", "b", "a"]).fingerprint() != fp


def test_fingerprint_of_images_follows_pixels(tmp_path):
    a = np.zeros((4, 4), np.uint8)
    b = a.copy()
    b[1, 2] = 1

    def ex(inputs: list) -> Examples:
        return Examples(inputs=inputs, labels=None, origins=[""] * len(inputs), modality=IMAGE)

    assert ex([a]).fingerprint() == ex([a.copy()]).fingerprint()
    assert ex([a]).fingerprint() != ex([b]).fingerprint()
    p1 = random_png(tmp_path / "1.png", seed=1)
    p2 = random_png(tmp_path / "2.png", seed=1)  # same content, other name
    p3 = random_png(tmp_path / "3.png", seed=2)
    assert ex([p1]).fingerprint() == ex([p2]).fingerprint()
    assert ex([p1]).fingerprint() != ex([p3]).fingerprint()


# --------------------------------------------------------------------------- bad paths


def test_unsupported_extension_names_the_path(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK\x03\x04")
    with pytest.raises(DataError) as err:
        load_data(path)
    msg = str(err.value)
    assert str(path) in msg and "'.xlsx'" in msg and ".csv" in msg


def test_missing_path_names_the_path(tmp_path):
    path = tmp_path / "missing.csv"
    with pytest.raises(DataError) as err:
        load_data(path)
    assert str(path) in str(err.value) and "no such file or folder" in str(err.value)

    train = labelled_csv(tmp_path / "train.csv", {"a": 3, "b": 3})
    with pytest.raises(DataError) as err:
        load_data(train, test=tmp_path / "missing_test.csv")
    assert str(tmp_path / "missing_test.csv") in str(err.value)


def test_garbage_parquet_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="broken.parquet"):
        read_source(path)


def test_load_examples_is_the_one_validated_reader(tmp_path):
    """evaluate, predict --support, meta-learning read through load_examples: the same
    validation as load_data (bad rows dropped and counted, labels canonical, other classes
    dropped and counted)."""
    from transferkit.data import DataReport, load_examples

    path = tmp_path / "eval.csv"
    path.write_text("text,label\nok one,b|a\n ,a\nok two,zebra\nok three,NA\nok four,a\n")
    report = DataReport()
    ex = load_examples(path, label_delimiter="|", classes=["a", "b"], report=report)
    assert ex.inputs == ["ok one", "ok four"] and ex.labels == ["a|b", "a"]
    assert report.counts() == {"empty_text": 1, "missing_label": 1, "unseen_label": 1}
    assert [i.origin for i in report.issues] == ["eval.csv line 3", "eval.csv line 5",
                                                 "eval.csv line 4"]


class _FixedEngine:
    """What ``predict_file`` needs of an engine, recording which inputs it was asked about."""

    modality = TEXT
    classes = ["a", "b"]

    def __init__(self) -> None:
        self.seen: list[str] = []

    def predict_proba(self, inputs: list[str]) -> np.ndarray:
        self.seen += inputs
        return np.tile([0.25, 0.75], (len(inputs), 1))

    def labels_from_proba(self, proba: np.ndarray) -> list[str]:
        return [self.classes[i] for i in proba.argmax(axis=1)]


def test_predict_reports_over_long_and_empty_rows_in_place(tmp_path):
    """predict validates rows as load_examples does (max_text_chars included), never runs the
    model on a bad row, and keeps every row's place, its id and the reason."""
    from transferkit.data import load_examples
    from transferkit.reuse.predict import predict_file

    path = tmp_path / "new.csv"
    pd.DataFrame({"id": [7, 8, 9, 10], "text": ["fine", "x" * 100_001, "", "also fine"]}
                 ).to_csv(path, index=False)
    engine = _FixedEngine()
    out, n_ok, n_bad = predict_file(engine, path, tmp_path / "pred.csv")
    assert (n_ok, n_bad) == (2, 2) and engine.seen == ["fine", "also fine"]
    pred = pd.read_csv(out, keep_default_na=False)
    assert list(pred.columns[:2]) == ["row", "id"] and list(pred["id"]) == [7, 8, 9, 10]
    assert list(pred["label"]) == ["b", "", "", "b"]
    assert pred["error"][1] == ("text longer than max_text_chars (split it, or raise "
                                "max_text_chars) (100,001 characters, max_text_chars is 100,000)")
    assert pred["error"][2] == "empty or missing text"
    assert pred["error"][0] == pred["error"][3] == ""

    # a lower limit: the rows predicted are exactly the rows load_examples keeps
    engine = _FixedEngine()
    predict_file(engine, path, tmp_path / "pred5.csv", max_text_chars=5)
    kept = load_examples(path, split="test", require_labels=False, max_text_chars=5)
    assert engine.seen == kept.inputs == ["fine"]
    pred = pd.read_csv(tmp_path / "pred5.csv", keep_default_na=False)
    assert pred["error"][3].startswith("text longer than max_text_chars")
    assert list(pred.loc[pred["error"] == "", "row"]) == kept.origins


def test_read_examples_keeps_every_row_and_validate_examples_drops_them(tmp_path):
    """load_examples is read_examples then validate_examples: the first keeps bad rows (for a
    reader that must keep their places), the second is the one row validation."""
    from transferkit.data import DataReport, load_examples, read_examples, validate_examples

    path = tmp_path / "eval.csv"
    path.write_text("text,label\nok one,b|a\n ,a\nok two,zebra\nok three,NA\nok four,a\n")
    raw = read_examples(path, label_delimiter="|")
    assert len(raw) == 5 and raw.labels[0] == "a|b" and raw.multilabel
    report = DataReport()
    ex = validate_examples(raw, report, classes=["a", "b"])
    same = load_examples(path, label_delimiter="|", classes=["a", "b"])
    assert ex.inputs == same.inputs == ["ok one", "ok four"]
    assert report.counts() == {"empty_text": 1, "missing_label": 1, "unseen_label": 1}
    unlabelled = validate_examples(raw, DataReport(), require_labels=False, max_text_chars=6)
    assert unlabelled.inputs == ["ok one", "ok two"]  # "ok three"/"ok four" are too long
