"""Data read silently wrong (issue 16, items 16 and 17): hostile and odd files.

Each test writes the file a user (or an adversary) could hand transferkit and asserts that it
is either read exactly as written or refused with a message naming the file, the place and
the fix. Families of inputs (missing-label spellings, label strings, pixel values, lengths
around the text limit) are fuzzed with hypothesis.
"""

from __future__ import annotations

import json
import string
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from transferkit.data import DataReport, load_data, read_source
from transferkit.data.images import to_pil
from transferkit.data.validate import clean_rows
from transferkit.errors import DataError

# database=None: no .hypothesis/ folder is written into the checkout
FUZZ = settings(max_examples=40, deadline=None, database=None)
SPELLINGS = ["NaN", "nan", "NA", "N/A", "n/a", "null", "NULL", "None", "none", "<NA>", "#N/A"]


def good_rows(n: int) -> str:
    return "".join(f"text number {i},{'ab'[i % 2]}\n" for i in range(n))


def write_jsonl(path: Path, rows: list[object]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------- 16: labels


@FUZZ
@given(spelling=st.sampled_from(SPELLINGS), pad=st.sampled_from(["", " ", "  "]),
       suffix=st.sampled_from([".csv", ".jsonl", ".parquet"]))
def test_missing_label_spellings_are_reported_rows_not_classes(spelling, pad, suffix):
    cell = f"{pad}{spelling}{pad}"
    frame = pd.DataFrame({"text": [f"text number {i}" for i in range(21)],
                          "label": ["a", "b"] * 10 + [cell]})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"train{suffix}"
        if suffix == ".csv":
            frame.to_csv(path, index=False)
        elif suffix == ".jsonl":
            frame.to_json(path, orient="records", lines=True)
        else:
            frame.to_parquet(path, index=False)
        data = load_data(path)

    assert data.classes == ["a", "b"]
    issues = [(i.kind, i.origin, i.detail) for i in data.report.issues]
    where = {".csv": "line 22", ".jsonl": "line 21", ".parquet": "row 21"}[suffix]
    assert issues == [("missing_label", f"train{suffix} {where}",
                       f"'{spelling}' is read as no label")]


# no bare "\r": pandas' to_csv writes it unquoted, so the file itself has a line break there
# (every CSV reader, Excel's too, sees two rows), which is not what this test is about
label_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                            blacklist_characters="\x00\r"), max_size=20)


@FUZZ
@given(labels=st.lists(st.one_of(st.sampled_from(SPELLINGS), label_text), min_size=1,
                       max_size=8),
       suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".parquet"]))
def test_label_cells_are_the_files_text_or_a_reported_missing_label(labels, suffix):
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(len(labels))], "label": labels})
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"d{suffix}"
        if suffix in (".csv", ".tsv"):
            frame.to_csv(path, index=False, sep="," if suffix == ".csv" else "\t")
        elif suffix == ".jsonl":
            frame.to_json(path, orient="records", lines=True, force_ascii=False)
        else:
            frame.to_parquet(path, index=False)
        ex = read_source(path)["all"]
        report = DataReport()
        kept = clean_rows(ex, report, require_labels=True)

    wanted = [lab.strip() for lab in labels if lab.strip().lower() not in
              {"", "nan", "na", "n/a", "#n/a", "<na>", "null", "none"}]
    assert kept.labels == wanted  # exactly the file's text, never merged or renamed
    assert len(report.issues) == len(labels) - len(wanted)
    assert {i.kind for i in report.issues} <= {"missing_label"}


def test_jsonl_number_and_string_labels_are_refused_naming_rows(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [
        {"text": "one", "label": 1}, {"text": "two", "label": 0},
        {"text": "three", "label": "1"}, {"text": "four", "label": 0},
    ])
    with pytest.raises(DataError) as err:
        read_source(path)
    msg = str(err.value)
    assert msg.startswith("t.jsonl: the label column 'label' mixes numbers (line 1: 1) and "
                          "strings (line 3: \"1\")")
    assert "all as strings" in msg

    same = write_jsonl(tmp_path / "n.jsonl", [{"text": "a", "label": 1}, {"text": "b",
                                                                          "label": 1.0}])
    assert read_source(same)["all"].labels == ["1", "1"]  # one JSON type: compared as numbers


@pytest.mark.parametrize("column", ["text", "label"])
def test_parquet_list_column_is_refused_naming_the_column(tmp_path, column):
    frame = pd.DataFrame({"text": ["K and R", "the C book"], "label": ["a", "b"]})
    frame[column] = [["K", "and", "R"], ["the", "C", "book"]]
    path = tmp_path / "lists.parquet"
    frame.to_parquet(path, index=False)

    with pytest.raises(DataError) as err:
        read_source(path)
    msg = str(err.value)
    assert msg.startswith(f"lists.parquet: column '{column}' holds lists, not one {column} per "
                          "row (row 1: ['K', 'and', 'R'])")
    assert ("--label-delimiter" if column == "label" else "str.join(' ')") in msg


def test_jsonl_dict_text_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"text": {"title": "x"}, "label": "a"}])
    with pytest.raises(DataError, match=r"d.jsonl: column 'text' holds dicts \(structs\)"):
        read_source(path)


# --------------------------------------------------------------------------- 16: images


@FUZZ
@given(seed=st.integers(0, 2**32 - 1), high=st.integers(256, 65535))
def test_16bit_png_keeps_its_grey_levels(seed, high):
    pixels = np.random.default_rng(seed).integers(0, high + 1, (12, 12), dtype=np.uint16)
    pixels[0, 0] = high
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "deep.png"
        Image.fromarray(pixels).save(path)
        assert Image.open(path).mode.startswith("I")
        got = np.asarray(to_pil(path))[..., 0].astype(int)

    expected = np.rint(pixels / 257.0).astype(int)
    assert np.abs(got - expected).max() <= 1


def test_16bit_gradient_is_not_white(tmp_path):
    gradient = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(gradient).save(tmp_path / "g.png")
    rgb = np.asarray(to_pil(tmp_path / "g.png"))
    assert (rgb == 255).mean() < 0.01
    assert abs(rgb.mean() - 127.5) < 1

    np.savez(tmp_path / "g.npz", images=np.stack([gradient, gradient]), labels=np.array([0, 1]))
    ex = read_source(tmp_path / "g.npz")["all"]
    assert ex.inputs[0].dtype == np.uint8 and abs(ex.inputs[0].mean() - 127.5) < 1


@pytest.mark.parametrize(("images", "expected"), [
    (np.zeros((4, 8, 8, 7), np.uint8), "has 7 channels (shape (4, 8, 8, 7))"),
    (np.zeros((4, 0, 8), np.uint8), "has shape (4, 0, 8): an image must be at least 1 pixel"),
    (np.zeros((4, 8, 0, 3), np.uint8), "has shape (4, 8, 0, 3)"),
    (np.zeros((4, 3, 8, 8), np.uint8), "It looks channels-first: save images.transpose"),
    (np.zeros((0, 8, 8), np.uint8), "holds no images"),
    (np.full((4, 8, 8), np.nan, np.float32), "holds NaN or infinite values"),
    (np.full((4, 8, 8), -3, np.int16), "holds values -3..-3"),
    (np.zeros((4, 8, 8), "U1"), "has dtype <U1"),
])
def test_npz_bad_images_array_is_named_with_the_fix(tmp_path, images, expected):
    path = tmp_path / "bad.npz"
    np.savez(path, images=images, labels=np.arange(len(images)) % 2)
    with pytest.raises(DataError) as err:
        load_data(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: array 'images' ")
    assert expected in msg
    assert "Save images as uint8 (N, H, W) or (N, H, W, C) with C in 1, 3, 4" in msg


# --------------------------------------------------------------------------- 16: places


def test_bad_jsonl_line_is_reported_as_file_and_line(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "b", "label": "y"}\n'
                    '{"text": oops}\n', encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_source(path)
    assert str(err.value).startswith(f"{path}:4: not valid JSON (Expecting value, column 10)")

    path.write_text('{"text": "a", "label": "x"}\n\n["b", "y"]\n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{path}:3: a JSON list, not an object"):
        read_source(path)


def test_jsonl_rows_are_its_line_numbers(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "a", "label": "x"}\n\n{"text": "", "label": "y"}\n',
                    encoding="utf-8")
    assert read_source(path)["all"].origins == ["t.jsonl line 1", "t.jsonl line 3"]


def test_csv_row_with_more_fields_than_the_header_is_an_error(tmp_path):
    # pandas would silently take the first column as the index: text "b", label "c".
    path = tmp_path / "t.csv"
    path.write_text("text,label\na,b,c\nd,e,f\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        read_source(path)
    assert "t.csv" in str(err.value) and "Expected 2 fields in line 2, saw 3" in str(err.value)
    assert "quote such texts" in str(err.value)


def test_duplicate_and_empty_header_names_are_numbered_like_pandas(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label,text,,label\nhello,a,x,y,z\n", encoding="utf-8")
    frame_columns = ["text", "label", "text.1", "Unnamed: 3", "label.1"]
    ex = read_source(path, text_column="text.1", label_column="label")["all"]
    assert ex.inputs == ["x"] and ex.labels == ["a"]
    with pytest.raises(DataError, match=", ".join(frame_columns).replace(".", r"\.")):
        read_source(path, text_column="nope")


def test_all_labels_missing_says_so_not_two_classes(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\n" + "".join(f"t{i},NA\n" for i in range(10)), encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_data(path)
    msg = str(err.value)
    assert "t.csv: 10 of 10 rows are unusable" in msg
    assert "missing label: t.csv line 2 ('NA' is read as no label)" in msg


# --------------------------------------------------------------------------- 17: size


def one_line_csv(n_bytes: int, seed: int = 0) -> str:
    """Prose-like fields with commas and many repeats: what made pandas' header quadratic."""
    rng = np.random.default_rng(seed)
    phrases = ["the cat", " sat on", " the mat", " and", " then", " left"]
    out, size = [], 0
    while size < n_bytes:
        phrase = phrases[int(rng.integers(len(phrases)))]
        out.append(phrase)
        size += len(phrase) + 1
    return ",".join(out)


def test_one_megabyte_single_line_csv_is_refused_at_once(tmp_path):
    path = tmp_path / "one_line.csv"
    path.write_text(one_line_csv(1_000_000), encoding="utf-8")  # took 448 s before
    with pytest.raises(DataError) as err:
        read_source(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: the first line has ")
    assert "columns, more than the 10,000 a table of texts can have" in msg
    assert "names its columns (e.g. text,label)" in msg


def test_single_line_that_is_one_huge_field_is_not_a_header(tmp_path):
    path = tmp_path / "one_field.csv"
    path.write_text("x" * 1_000_000, encoding="utf-8")
    with pytest.raises(DataError, match=r"one_field.csv: the first line is not a header \("):
        read_source(path)


@settings(max_examples=15, deadline=None, database=None)
@given(n_fields=st.integers(1, 9_000), width=st.integers(1, 30), distinct=st.integers(1, 50))
def test_single_line_csv_is_a_header_without_rows(n_fields, width, distinct):
    names = [string.ascii_letters[i % distinct % 52] * width for i in range(n_fields)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "h.csv"
        path.write_text(",".join(names), encoding="utf-8")
        with pytest.raises(DataError, match="the file has no rows"):
            read_source(path)


def test_long_text_is_a_reported_bad_row_with_the_limit(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("text,label\n" + good_rows(20) + "x" * 150_000 + ",a\n", encoding="utf-8")

    data = load_data(path)

    issues = [(i.kind, i.origin, i.detail) for i in data.report.issues]
    assert issues == [("long_text", "t.csv line 22",
                       "150,000 characters, max_text_chars is 100,000")]
    assert "1 x text longer than max_text_chars (split it, or raise max_text_chars)" in \
        data.report.lines()[0]
    assert len(load_data(path, max_text_chars=200_000).report.issues) == 0
    with pytest.raises(DataError, match="t.csv line 22"):
        load_data(path, strict=True)


@FUZZ
@given(limit=st.integers(1, 200), lengths=st.lists(st.integers(1, 300), min_size=1,
                                                   max_size=6))
def test_text_length_limit_is_exact(limit, lengths):
    limit = max(limit, 15)  # the good rows are up to 15 characters long
    texts = [f"{i}{'y' * n}" for i, n in enumerate(lengths)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csv"
        path.write_text("text,label\n" + good_rows(40) + "".join(f"{t},b\n" for t in texts),
                        encoding="utf-8")
        data = load_data(path, max_text_chars=limit, max_bad_fraction=1.0)
    long_rows = [f"t.csv line {42 + i}" for i, t in enumerate(texts) if len(t) > limit]
    assert [i.origin for i in data.report.issues if i.kind == "long_text"] == long_rows


@pytest.mark.parametrize("orient", ["columns", "records"])
def test_json_file_layouts_pandas_writes_are_read(tmp_path, orient):
    frame = pd.DataFrame({"text": ["NA", "0123", "fine"], "label": ["a", "b", "a"]})
    path = tmp_path / "t.json"
    frame.to_json(path, orient=orient)
    ex = read_source(path)["all"]
    assert ex.inputs == ["NA", "0123", "fine"] and ex.labels == ["a", "b", "a"]

    path.write_text('[{"text": "a", "label": "x"},\n {"text": "b" "label": "y"}]', "utf-8")
    with pytest.raises(DataError, match=rf"{path}:2: not valid JSON \(Expecting ','"):
        read_source(path)
