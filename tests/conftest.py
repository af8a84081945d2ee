"""Shared fixtures: a private feature cache, offline hub, and session-cached real models."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Set before transferkit is imported anywhere: tests never touch the user's cache or the hub.
if "TRANSFERKIT_CACHE" not in os.environ:
    os.environ["TRANSFERKIT_CACHE"] = tempfile.mkdtemp(prefix="tk-cache-")
    atexit.register(shutil.rmtree, os.environ["TRANSFERKIT_CACHE"], True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if not DATA.is_dir():  # CI clones the project next to shared/ as well
    DATA = Path(os.environ.get("TRANSFERKIT_DATA", "/work/shared/data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"shared data folder not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def keywords(data_dir) -> Path:
    """keywords_espeak (../shared/data): 10 spoken keywords, train/ and test/ folders."""
    root = data_dir / "keywords_espeak"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return root


@pytest.fixture(scope="session")
def minilm():
    from transferkit.backbones import load_backbone

    return load_backbone("minilm")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer random BERT with a real WordPiece tokenizer (MiniLM's), saved as a folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from transferkit.backbones import ALIASES

    path = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(ALIASES["minilm"].bundled_path())
    config = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64,
                        max_position_embeddings=128)
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path
