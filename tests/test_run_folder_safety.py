"""A run folder is untrusted input: loading it reads only inside it, never unpickles, and
answers an edited file with an ArtifactError (never a traceback or a huge allocation)."""

from __future__ import annotations

import json
import pickle
import shutil
from copy import deepcopy

import pytest
import test_artifact
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transferkit import Classifier
from transferkit.artifact import schema
from transferkit.errors import ArtifactError, TransferkitError
from transferkit.reuse.engines import load_engine

saved = test_artifact.saved  # the fixture of a saved tiny-BERT run, shared with those tests
copy = test_artifact.copy


def edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def outside_model(tmp_path, tiny_bert_dir):
    """A loadable model outside the run: what an edited run would like to make us read."""
    return shutil.copytree(tiny_bert_dir, tmp_path / "outside")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A run of a tiny random timm network (no fit needed to test loading)."""
    from transferkit.adapt.model import TransferModel
    from transferkit.artifact.store import save_model
    from transferkit.backbones.vision import create_timm_backbone

    backbone = create_timm_backbone("test_resnet", source="test_resnet", resolved="random",
                                    pretrained=False)
    run = tmp_path_factory.mktemp("image-run")
    save_model(TransferModel(backbone, ["a", "b"]), run, {"name": "probe"})
    return run


# -- item 7: nothing outside the run folder is read -------------------------------------------
@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_modules_json_naming_a_folder_outside_the_run_is_refused(saved, tmp_path, tiny_bert_dir,
                                                                   where):
    run = copy(saved[1], tmp_path)
    outside = outside_model(tmp_path, tiny_bert_dir)
    path = str(outside) if where == "absolute" else "../../outside"
    (run / "backbone" / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": path, "type": "sentence_transformers.models.Transformer"},
    ]))
    with pytest.raises(ArtifactError, match=r"modules\.json: module 0 path is .* not a path "
                                            r"inside"):
        Classifier.load(run)


def test_fast_tokenizer_files_outside_the_run_are_refused(saved, tmp_path, tiny_bert_dir):
    run = copy(saved[1], tmp_path)
    outside = outside_model(tmp_path, tiny_bert_dir)
    shutil.copy(outside / "tokenizer.json", outside / "tokenizer.1.json")
    edit_json(run / "backbone" / "tokenizer_config.json",
              lambda c: c.update(fast_tokenizer_files=[str(outside / "tokenizer.1.json")]))
    with pytest.raises(ArtifactError, match="fast_tokenizer_files is .* not a path inside"):
        Classifier.load(run)


def test_local_dir_architecture_is_refused(image_run, tmp_path):
    import timm
    from timm.models import save_for_hf

    run = copy(image_run, tmp_path)
    save_for_hf(timm.create_model("test_resnet", num_classes=0), tmp_path / "elsewhere")
    edit_json(run / "backbone" / "transferkit_backbone.json",
              lambda c: c.update(architecture=f"local-dir:{tmp_path / 'elsewhere'}"))
    with pytest.raises(ArtifactError, match="architecture is 'local-dir:.*not a timm model"):
        Classifier.load(run)
    Classifier.load(image_run)  # the unedited run loads


def test_symlink_out_of_the_run_is_refused(saved, tmp_path, tiny_bert_dir):
    run = copy(saved[1], tmp_path)
    outside = outside_model(tmp_path, tiny_bert_dir)
    (run / "backbone" / "tokenizer.json").unlink()
    (run / "backbone" / "tokenizer.json").symlink_to(outside / "tokenizer.json")
    with pytest.raises(ArtifactError, match="tokenizer.json is a symlink to .*outside the run"):
        Classifier.load(run)


def test_shipped_code_in_sub_folders_is_found(tiny_bert_dir, tmp_path):
    from transferkit.backbones import load_backbone

    folder = shutil.copytree(tiny_bert_dir, tmp_path / "model")
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / "sub" / "deeper" / "evil.py").write_text("raise SystemExit('ran')\n")
    (folder / "sub" / "config.json").write_text(json.dumps({"auto_map": {"AutoModel": "x.Y"}}))
    with pytest.raises(TransferkitError, match="auto_map in sub/config.json, "
                                               "sub/deeper/evil.py"):
        load_backbone(str(folder))


# -- item 11: edited run files ----------------------------------------------------------------
@pytest.mark.parametrize("in_features,feature_dim", [(10**12, None), (-5, None), (10**12, 10**12)])
def test_head_size_is_checked_before_anything_is_allocated(saved, tmp_path, in_features,
                                                           feature_dim):
    run = copy(saved[1], tmp_path)

    def change(c):
        c["head"]["in_features"] = in_features
        if feature_dim:
            c["backbone"]["feature_dim"] = feature_dim
    edit_json(run / "config.json", change)
    with pytest.raises(ArtifactError, match="in_features"):
        Classifier.load(run)


def test_backbone_config_describing_a_bigger_model_is_refused(saved, tmp_path):
    run = copy(saved[1], tmp_path)  # without the check, hidden_size 20000 took 23 GB and 80 s
    edit_json(run / "backbone" / "config.json", lambda c: c.update(hidden_size=2048))
    with pytest.raises(ArtifactError, match="describes a model of 101M parameters, but its weights "
                                            "hold 1.0M"):
        Classifier.load(run)


@pytest.mark.parametrize("name", ["config.json", "backbone/config.json",
                                  "backbone/tokenizer_config.json"])
def test_deeply_nested_json_is_refused(saved, tmp_path, name):
    run = copy(saved[1], tmp_path)
    (run / name).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="nested too deeply"):
        Classifier.load(run)


def test_bloated_json_is_refused_before_it_is_parsed(saved, tmp_path, monkeypatch):
    run = copy(saved[1], tmp_path)
    monkeypatch.setattr(schema, "MAX_JSON_BYTES", 50_000, raising=False)
    config = run / "config.json"
    config.write_text(config.read_text() + " " * 60_000)
    with pytest.raises(ArtifactError, match="more than the 50,000"):
        Classifier.load(run)


class _Marker:
    """Unpickling this creates a file: proof that a pickle was (not) loaded."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("name", ["backbone/adapter/adapter_model.bin", "backbone/model.pt"])
def test_pickled_weights_are_refused_and_never_unpickled(saved, tmp_path, name):
    from peft import LoraConfig

    run = copy(saved[1], tmp_path)
    LoraConfig(r=2, target_modules=["query"]).save_pretrained(str(run / "backbone" / "adapter"))
    marker = tmp_path / "unpickled"
    (run / name).write_bytes(pickle.dumps(_Marker(marker)))
    with pytest.raises(ArtifactError, match="pickle file"):
        Classifier.load(run)
    assert not marker.exists()


def test_adapter_without_safetensors_weights_is_refused(saved, tmp_path):
    from peft import LoraConfig

    run = copy(saved[1], tmp_path)
    LoraConfig(r=2, target_modules=["query"]).save_pretrained(str(run / "backbone" / "adapter"))
    with pytest.raises(ArtifactError, match="adapter_model.safetensors"):
        Classifier.load(run)


@pytest.mark.parametrize("max_length", [100_000, 129, 0])
def test_onnx_export_max_length_is_bounded(saved, tmp_path, max_length):
    run = copy(saved[1], tmp_path)  # the tiny BERT's run was fitted with 128 positions
    fingerprint = json.loads((run / "config.json").read_text())["backbone"]["fingerprint"]
    (run / "onnx").mkdir()
    (run / "onnx" / "export.json").write_text(json.dumps({
        "format": "transferkit-onnx", "fingerprint": fingerprint, "modality": "text",
        "int8": False, "text": {"max_length": max_length, "pad_id": 0}}))
    with pytest.raises(ArtifactError, match=f"max_length {max_length} is not a whole number "
                                            "from 1 to 128"):
        load_engine(run, "onnx")


def test_image_size_out_of_range_is_refused(image_run, tmp_path):
    run = copy(image_run, tmp_path)
    edit_json(run / "backbone" / "transferkit_backbone.json",
              lambda c: c.update(input_size=[3, 100_000, 100_000]))
    with pytest.raises(ArtifactError, match="input_size"):
        Classifier.load(run)


# -- item 16: duplicate labels ----------------------------------------------------------------
def test_duplicate_labels_are_refused_on_load_and_never_saved(saved, tmp_path, monkeypatch):
    clf, path, _ = saved
    run = copy(path, tmp_path)
    edit_json(run / "config.json", lambda c: c.update(labels=["pos", "pos"]))
    with pytest.raises(ArtifactError, match="labels name 'pos' more than once"):
        Classifier.load(run)
    monkeypatch.setattr(clf.model, "classes", ["pos", "pos"])
    with pytest.raises(ArtifactError, match="Cannot save the model: labels name 'pos'"):
        clf.save(tmp_path / "duplicate")
    assert not (tmp_path / "duplicate").exists()


# -- fuzz: any edit of config.json loads or is a TransferkitError -----------------------------
LEAVES = (st.sampled_from([0, -1, -5, 10**12, 2**64, 0.5, "", "pos", "text", None, True]) |
          st.integers() | st.floats() | st.text(max_size=6))
VALUES = st.recursive(LEAVES, lambda kids: st.lists(kids, max_size=3) |
                      st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=6)


def _slots(value):
    """(container, key) of every value inside ``value``, at any depth."""
    items = value.items() if isinstance(value, dict) else \
        enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        yield value, key
        yield from _slots(child)


@st.composite
def mutated(draw, config: dict) -> str:
    """``config`` with one to three values replaced, deleted or added beside (every value
    equally likely, at any depth); or its text cut short."""
    data = deepcopy(config)
    for _ in range(draw(st.integers(1, 3))):
        slots = list(_slots(data)) or [(data, None)]
        parent, key = draw(st.sampled_from(slots))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if key is not None and action == "replace":
            parent[key] = draw(VALUES)
        elif key is not None and action == "delete":
            del parent[key]
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(VALUES)
        else:
            parent.append(draw(VALUES))
    text = json.dumps(data)
    return text[:draw(st.integers(0, len(text)))] if draw(st.integers(0, 9)) == 0 else text


@pytest.fixture(scope="module")
def fuzz_run(saved, tmp_path_factory):
    from transferkit.reuse.onnx_export import export_onnx

    run = shutil.copytree(saved[1], tmp_path_factory.mktemp("fuzz") / "run")
    export_onnx(run)
    return run


def _load_both(run) -> None:
    Classifier.load(run)
    assert len(load_engine(run, "onnx").predict(["a", "word " * 300])) == 2


@pytest.mark.parametrize("name,examples", [
    ("config.json", 300), ("backbone/config.json", 60), ("backbone/transferkit_backbone.json", 60),
    ("backbone/tokenizer_config.json", 60), ("onnx/export.json", 60)])
def test_fuzzed_json_loads_or_says_what_is_wrong(fuzz_run, name, examples):
    original = json.loads((fuzz_run / name).read_text())

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(mutated(original))
    def check(text: str) -> None:
        (fuzz_run / name).write_text(text)
        try:
            _load_both(fuzz_run)
        except TransferkitError:
            pass

    try:
        check()
    finally:
        (fuzz_run / name).write_text(json.dumps(original))
    _load_both(fuzz_run)
