"""Masked-language-model pretraining of text encoders: continued, or from scratch.

Continued (domain-/task-adaptive) pretraining starts from any transformers encoder that has a
masked-LM form (BERT, RoBERTa, MiniLM, ...), keeping its MLM head when the checkpoint ships
one. From scratch, a WordPiece tokenizer is trained on the corpus with the ``tokenizers``
library (BERT's pre-tokenizer splits every CJK character into its own word, so Chinese
works), and a BERT of a standard small size is initialised at random. Masking is
transformers' collator: 15% of the tokens, 80% of those become ``[MASK]``, 10% a random
token, 10% stay; whole-word masking masks every piece of a word together.

The loss is computed only at masked positions: the vocabulary projection is the most
expensive layer of a small model (for BERT-tiny, 6,551 x 128 against 2 x 12 x 128^2 for its
two layers), and applying it to the 15% of positions that have a target instead of to all
of them gives the same loss with a 3.2x faster training step (forward + backward, batch
128 x 60 tokens, bf16: 0.40 s against 1.28 s, measured here with another job on the cores).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..backbones.text import BACKBONE_FILE
from ..config import PretrainConfig
from ..data.examples import TEXT
from ..errors import ConfigError
from .common import holdout, run_objective

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# Google's BERT miniatures (Turc et al. 2019): layers, hidden size, attention heads.
SIZES = {"tiny": (2, 128, 2), "mini": (4, 256, 4), "small": (4, 512, 8)}
DEFAULTS = {"continued": {"lr": 5e-5, "batch_size": 32}, "scratch": {"lr": 5e-4, "batch_size": 64}}


def train_wordpiece(texts: list[str], vocab_size: int, lowercase: bool, max_length: int) -> Any:
    """A BERT WordPiece tokenizer trained on ``texts``: every character gets an entry, up to
    the vocabulary size (``limit_alphabet`` is raised from its default 1000, which would turn
    most Chinese characters into ``[UNK]``); merges need a pair seen at least twice."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertTokenizer

    wordpiece = BertWordPieceTokenizer(clean_text=True, handle_chinese_chars=True,
                                       strip_accents=None, lowercase=lowercase)
    wordpiece.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                                  limit_alphabet=max(vocab_size, 1000),
                                  special_tokens=SPECIAL_TOKENS, show_progress=False)
    return BertTokenizer(vocab=wordpiece.get_vocab(), do_lower_case=lowercase,
                         tokenize_chinese_chars=True, model_max_length=max_length)


def bert_config(size: str, vocab_size: int, max_length: int) -> Any:
    from transformers import BertConfig

    if size not in SIZES:
        raise ConfigError(f"Unknown size '{size}': choose one of {', '.join(SIZES)}.")
    layers, hidden, heads = SIZES[size]
    return BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=heads, intermediate_size=4 * hidden,
                      max_position_embeddings=max_length, pad_token_id=0)


class MaskedLMInputs:
    """The loop's input side for masked-LM: tokenise once, mask each batch anew.

    Masks are drawn from torch's global generator, whose state Accelerate checkpoints, so a
    resumed run masks exactly as the uninterrupted one would have."""

    modality = TEXT

    def __init__(self, tokenizer: Any, max_length: int, mlm_probability: float,
                 whole_word: bool) -> None:
        import warnings

        from transformers import DataCollatorForLanguageModeling

        if tokenizer.mask_token is None:
            raise ConfigError("This tokenizer has no mask token, so the model cannot be "
                              "pretrained with masked-LM. Use a BERT-like encoder.")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.whole_word = whole_word
        with warnings.catch_warnings():  # whole-word masking: transformers explains that it
            warnings.simplefilter("ignore")  # never replaces by random tokens; documented above
            self.collator = DataCollatorForLanguageModeling(
                tokenizer, mlm_probability=mlm_probability, whole_word_mask=whole_word)

    def prepare(self, texts: list[str]) -> list[dict[str, Any]]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length,
                             return_special_tokens_mask=True)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids",
                            "special_tokens_mask") if k in enc]
        items = [{k: enc[k][i] for k in keys} for i in range(len(texts))]
        if self.whole_word:
            # transformers finds words by gaps between token offsets, which merges a run of
            # Chinese characters (no spaces) into one "word". The tokenizer's own word ids
            # are right (BERT's pre-tokenizer splits every CJK character), so they are
            # written as offsets with a gap before every new word.
            for i, item in enumerate(items):
                item["offset_mapping"] = [(t + (w or 0), t + (w or 0) + 1)
                                          for t, w in enumerate(enc.word_ids(i))]
        return items

    def cost(self, item: dict[str, Any]) -> int:
        return len(item["input_ids"])

    def collate(self, items: list[dict[str, Any]], augment: bool = False
                ) -> dict[str, torch.Tensor]:
        plain = [{k: v for k, v in it.items() if k != "offset_mapping"} for it in items]
        batch = dict(self.tokenizer.pad(plain, padding=True, return_tensors="pt"))
        special = batch.pop("special_tokens_mask")
        offsets = None
        if self.whole_word:  # padded positions are special tokens, so their offsets are moot
            width = batch["input_ids"].shape[1]
            offsets = torch.zeros(len(items), width, 2, dtype=torch.long)
            for i, it in enumerate(items):
                offsets[i, :len(it["offset_mapping"])] = torch.tensor(it["offset_mapping"])
        batch["input_ids"], batch["labels"] = self.collator.torch_mask_tokens(
            batch["input_ids"], special_tokens_mask=special, offset_mapping=offsets)
        return batch


def prediction_head(mlm: nn.Module) -> str | None:
    """The name of the MLM head, where it is one module mapping hidden states to vocabulary
    logits (BERT's ``cls``, RoBERTa's ``lm_head``); None where it is split up (then the
    full forward runs)."""
    base = mlm.base_model
    heads = [name for name, m in mlm.named_children() if m is not base]
    return heads[0] if len(heads) == 1 else None


class MaskedLMObjective(nn.Module):
    def __init__(self, mlm: nn.Module, inputs: MaskedLMInputs) -> None:
        super().__init__()
        self.mlm = mlm
        self.head_name = prediction_head(mlm)  # a name: the module stays registered once
        self.backbone = inputs  # the loop's input protocol (not a module)
        self.units_seen = 0

    def masked_logits(self, labels: torch.Tensor, **inputs: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and targets of the masked positions only."""
        picked = labels != -100
        if self.head_name is None:
            logits = self.mlm(**inputs).logits
            return logits[picked].float(), labels[picked]
        hidden = self.mlm.base_model(**inputs).last_hidden_state
        head = getattr(self.mlm, self.head_name)
        return head(hidden[picked]).float(), labels[picked]

    def forward(self, labels: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.units_seen += int(inputs["attention_mask"].sum())
        logits, targets = self.masked_logits(labels, **inputs)
        if targets.numel() == 0:  # a batch of very short texts can draw no mask at all
            return logits.sum() * 0.0
        return nn.functional.cross_entropy(logits, targets)


def heldout_batches(inputs: MaskedLMInputs, texts: list[str], batch_size: int, seed: int
                    ) -> list[dict[str, torch.Tensor]]:
    """The held-out texts masked once, with a fixed seed: every evaluation scores the same
    masked positions, so perplexities are comparable across steps (and runs). The training
    generator is left as it was."""
    prepared = inputs.prepare(texts)
    order = sorted(range(len(prepared)), key=lambda i: inputs.cost(prepared[i]))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [inputs.collate([prepared[i] for i in order[s:s + batch_size]])
                for s in range(0, len(order), batch_size)]


def perplexity(objective: MaskedLMObjective, batches: list[dict[str, torch.Tensor]]
               ) -> dict[str, float]:
    device = next(objective.parameters()).device
    loss_sum, n, correct = 0.0, 0, 0
    for batch in batches:
        batch = {k: v.to(device) for k, v in batch.items()}
        logits, targets = objective.masked_logits(**batch)
        loss_sum += nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        correct += int((logits.argmax(-1) == targets).sum())
        n += targets.numel()
    mean = loss_sum / max(1, n)
    return {"valid_perplexity": math.exp(min(mean, 50.0)), "valid_loss": mean,
            "valid_accuracy": correct / max(1, n)}


def scratch_tokenizer(cfg: PretrainConfig, texts: list[str], checkpoint_dir: Path) -> Any:
    """``--tokenizer`` if given; else the one an interrupted run trained (kept beside its
    checkpoints); else a new one. ``tokenizers`` does not learn the same vocabulary twice
    (3 of 4 trainings on the same texts differed from the first here; frequency ties at the
    cut are the likely cause), so retraining could change rare entries and their ids: a
    resumed run must reuse the interrupted run's tokenizer to continue it exactly."""
    from transformers import AutoTokenizer

    kept = checkpoint_dir / "tokenizer"
    if cfg.tokenizer or (cfg.resume and kept.is_dir()):
        return AutoTokenizer.from_pretrained(cfg.tokenizer or kept)
    tokenizer = train_wordpiece(texts, cfg.vocab_size, cfg.lowercase, cfg.max_length)
    if cfg.checkpoint_every:
        tokenizer.save_pretrained(kept)
    return tokenizer


def _start_model(cfg: PretrainConfig, texts: list[str], checkpoint_dir: Path
                 ) -> tuple[nn.Module, Any, dict]:
    """The MLM model, its tokenizer, and how the output backbone pools (kept from the source)."""
    from transformers import AutoModelForMaskedLM, BertForMaskedLM

    if cfg.scratch:
        tokenizer = scratch_tokenizer(cfg, texts, checkpoint_dir)
        torch.manual_seed(cfg.seed)
        mlm = BertForMaskedLM(bert_config(cfg.size, len(tokenizer), cfg.max_length))
        return mlm, tokenizer, {"pooling": "mean", "normalize": False,
                                "max_length": cfg.max_length, "start": f"scratch:{cfg.size}",
                                "head": "new", "vocab_size": len(tokenizer)}
    from ..backbones import load_backbone
    from ..backbones.text import TextBackbone, quiet_load_report

    backbone = load_backbone(cfg.source, trust_remote_code=cfg.trust_remote_code)
    if not isinstance(backbone, TextBackbone):
        raise ConfigError(f"--from {cfg.source} is an {backbone.modality} backbone; masked-LM "
                          "pretraining needs a text encoder (use --modality image for images).")
    try:
        with quiet_load_report():  # a missing MLM head is expected; the summary reports it
            mlm, info = AutoModelForMaskedLM.from_pretrained(
                backbone.model_dir, use_safetensors=True, dtype=torch.float32,
                output_loading_info=True, trust_remote_code=cfg.trust_remote_code)
    except (ValueError, OSError) as e:  # no masked-LM form: decoders (GPT-2, a GGUF file)
        raise ConfigError(
            f"{cfg.source} has no masked-LM form ({type(backbone.model).__name__}); continued "
            "pretraining here is masked-LM, for BERT-like encoders. Choose an encoder, or "
            "pretrain one from scratch with --scratch.") from e
    fresh_head = any(not k.startswith(mlm.base_model_prefix) for k in info["missing_keys"])
    return mlm, backbone.tokenizer, {
        "pooling": backbone.pooling, "normalize": backbone.normalize,
        "max_length": backbone.max_length, "start": cfg.source,
        "head": "new (the source ships none)" if fresh_head else "from the source"}


def pretrain_text(texts: list[str], cfg: PretrainConfig, stage: Path, checkpoint_dir: Path,
                  progress: Any = None, device: torch.device | None = None) -> dict[str, Any]:
    """Pretrain with masked-LM on ``texts``; write the backbone folder into ``stage``."""
    import json

    train_idx, valid_idx = holdout(len(texts), cfg.valid_fraction, cfg.valid_max, cfg.seed)
    train_texts = [texts[i] for i in train_idx]
    valid_texts = [texts[i] for i in valid_idx]
    # a scratch tokenizer learns from the training part only: held-out text stays unseen
    mlm, tokenizer, pooled = _start_model(cfg, train_texts, checkpoint_dir)
    max_length = min(cfg.max_length, pooled["max_length"] or cfg.max_length)
    inputs = MaskedLMInputs(tokenizer, max_length, cfg.mlm_probability, cfg.whole_word)
    objective = MaskedLMObjective(mlm, inputs)
    kind = "scratch" if cfg.scratch else "continued"
    lr = cfg.lr or DEFAULTS[kind]["lr"]
    batch_size = cfg.batch_size or DEFAULTS[kind]["batch_size"]
    evaluator = None
    if valid_texts:
        batches = heldout_batches(inputs, valid_texts, 2 * batch_size, cfg.seed + 1)
        evaluator = lambda: perplexity(objective, batches)  # noqa: E731
    result = run_objective(objective, train_texts, cfg, lr=lr, batch_size=batch_size,
                           metric="perplexity", evaluator=evaluator, run_dir=stage,
                           checkpoint_dir=checkpoint_dir, progress=progress, device=device)
    mlm = objective.mlm.cpu().eval()
    mlm.save_pretrained(stage, safe_serialization=True)  # encoder + MLM head: pretrain again
    tokenizer.save_pretrained(stage)
    preprocessing = {"kind": "transformers", "pooling": pooled["pooling"],
                     "normalize": pooled["normalize"], "max_length": max_length}
    (stage / BACKBONE_FILE).write_text(json.dumps(preprocessing, indent=2))
    evals = [e for e in result.pop("history", []) if "valid_perplexity" in e]
    return {
        "objective": "masked-lm", "kind": kind, "start": pooled["start"],
        "mlm_head": pooled["head"], "whole_word": cfg.whole_word,
        "mlm_probability": cfg.mlm_probability, "max_length": max_length,
        "parameters": sum(p.numel() for p in mlm.parameters()),
        "vocab_size": len(tokenizer), "lr": lr, "batch_size": batch_size,
        "train_texts": len(train_texts), "valid_texts": len(valid_texts),
        "tokens_seen": result["units_seen"], "tokens_per_second": result["units_per_second"],
        "steps": result["steps"], "planned_steps": result["planned_steps"],
        "best_step": result["best_step"], "stopped_early": result["stopped_early"],
        "precision": result["precision"], "train_seconds": result["train_seconds"],
        "eval_seconds": result["eval_seconds"],
        "valid_perplexity_start": evals[0]["valid_perplexity"] if evals else None,
        "valid_perplexity_best": result["best_valid"],
        "evaluations": [{k: e[k] for k in ("step", "valid_perplexity", "valid_accuracy")}
                        for e in evals],
    }
