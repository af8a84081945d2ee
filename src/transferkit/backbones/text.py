"""Text backbones: any transformers encoder or decoder LM, pooled to one vector per text."""

from __future__ import annotations

import json
import math
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.examples import TEXT
from ..errors import BackboneNotFoundError, ConfigError
from .base import (
    ADAPTER_DIR,
    Backbone,
    attach_adapter,
    inside,
    largest_module_list,
    split_adapter,
)

POOLINGS = ("mean", "cls", "max", "last")
BACKBONE_FILE = "transferkit_backbone.json"
# Decoder LMs see only the past, so the last real token is the one that has read the text.
_DECODER_SUFFIXES = ("ForCausalLM", "LMHeadModel")


class TextBackbone(Backbone):
    modality = TEXT

    def __init__(
        self, model: nn.Module, tokenizer: Any, *, pooling: str, normalize: bool,
        max_length: int, source: str, resolved: str,
    ) -> None:
        super().__init__(source, resolved)
        if pooling not in POOLINGS:
            raise ConfigError(f"Unknown pooling '{pooling}'. Choose one of: {', '.join(POOLINGS)}.")
        self.model = model
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self.feature_dim = int(model.config.hidden_size)

    # -- preprocessing ----------------------------------------------------------------------
    def prepare(self, examples: list[Any]) -> list[dict[str, list[int]]]:
        enc = self.tokenizer(list(examples), truncation=True, max_length=self.max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
        out = [{k: enc[k][i] for k in keys} for i in range(len(examples))]
        # A tokenizer that adds no special tokens (GPT-2, SmolLM2) turns "" into no tokens,
        # which a model cannot run alone: it reads one end-of-text token instead.
        filler = next((t for t in (self.tokenizer.eos_token_id, self.tokenizer.bos_token_id,
                                   self.tokenizer.pad_token_id) if t is not None), None)
        for item in out:
            if not item["input_ids"] and filler is not None:
                item.update({k: [0] for k in keys})
                item["input_ids"] = [filler]
                if "attention_mask" in item:
                    item["attention_mask"] = [1]
        return out

    def collate(self, prepared: list[dict[str, list[int]]], augment: bool = False
                ) -> dict[str, torch.Tensor]:
        """Pad one batch to its own longest sequence (never to max_length)."""
        return dict(self.tokenizer.pad(prepared, padding=True, return_tensors="pt"))

    def preprocess(self, examples: list[Any]) -> dict[str, torch.Tensor]:
        return self.collate(self.prepare(examples))

    def cost(self, prepared_item: dict[str, list[int]]) -> int:
        return len(prepared_item["input_ids"])

    def preprocessing(self) -> dict[str, Any]:
        return {"kind": "transformers", "pooling": self.pooling, "normalize": self.normalize,
                "max_length": self.max_length}

    # -- model ------------------------------------------------------------------------------
    def forward(self, **inputs: torch.Tensor) -> torch.Tensor:
        mask = inputs["attention_mask"]
        hidden = self.model(**inputs).last_hidden_state.float()
        pooled = pool(hidden, mask, self.pooling)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, p=2, dim=-1)
        return pooled

    def layer_groups(self) -> list[nn.Module]:
        layers = largest_module_list(self.model)
        if layers is None:
            return [self.model]
        in_layers = {id(p) for p in layers.parameters()}
        embeddings = getattr(self.model, "embeddings", None) or self.model.get_input_embeddings()
        in_embeddings = {id(p) for p in embeddings.parameters()}
        # Whatever is neither embeddings nor a layer (GPT-2's position table, final norms):
        # position tables belong with the input side, final norms with the output side.
        # A child that holds the layers and more (MPNet's encoder keeps the shared relative
        # position bias beside its layers) is split: only what is outside the layers joins.
        rest_in, rest_out = nn.ModuleList(), nn.ModuleList()
        covered = in_layers | in_embeddings
        for name, child in _outside(self.model, covered):
            input_side = any(k in name for k in ("emb", "position", "relative")) or \
                name in ("wpe", "wte")
            (rest_in if input_side else rest_out).append(child)
        groups: list[nn.Module] = [nn.ModuleList([embeddings, *rest_in])]
        groups.extend(layers)
        if len(rest_out):
            groups[-1] = nn.ModuleList([groups[-1], *rest_out])
        return groups

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        base, adapter = split_adapter(self.model)
        base.save_pretrained(directory, safe_serialization=True)
        if adapter is not None:
            adapter.save_pretrained(str(directory / ADAPTER_DIR), safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        (directory / BACKBONE_FILE).write_text(json.dumps(self.preprocessing(), indent=2))


def _outside(module: nn.Module, covered: set[int]) -> list[tuple[str, nn.Module]]:
    """(name, module) pairs that hold every parameter of ``module``'s children that is not in
    ``covered``, descending into a child only where it mixes covered and uncovered ones."""
    found: list[tuple[str, nn.Module]] = []
    for name, child in module.named_children():
        params = {id(p) for p in child.parameters()}
        if not params or params <= covered:
            continue
        if params.isdisjoint(covered):
            found.append((name, child))
            continue
        found.extend(_outside(child, covered))
        own = [p for p in child.parameters(recurse=False) if id(p) not in covered]
        if own:  # parameters set directly on the mixed child
            found.append((name, nn.ParameterList(own)))
    return found


class _DropLoadReport:
    """A logging filter for transformers' state-dict LOAD REPORT warning only."""

    def filter(self, record: Any) -> bool:
        return "LOAD REPORT" not in str(record.msg)


@contextmanager
def quiet_load_report():
    """Drop transformers' LOAD REPORT (missing / unexpected keys) while loading, and nothing
    else: for loads where transferkit knows the differences and reports them itself."""
    from transformers.utils import logging as hf_logging

    logger = hf_logging.get_logger("transformers.modeling_utils")
    drop = _DropLoadReport()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "mean":
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    if how == "cls":
        return hidden[:, 0]
    if how == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).max(1).values
    # last: right padding, so the last real token sits at (number of real tokens - 1)
    last = mask.sum(1).clamp(min=1) - 1
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def sentence_transformers_settings(directory: Path) -> dict[str, Any]:
    """The pooling, normalisation and length a sentence-transformers model was trained with."""
    modules = _read_json(directory / "modules.json")
    if not modules:
        return {}
    out: dict[str, Any] = {"normalize": False}
    for i, module in enumerate(modules if isinstance(modules, list) else []):
        module = module if isinstance(module, dict) else {}
        kind = str(module.get("type", ""))
        path = inside(directory, module.get("path", ""), directory / "modules.json",
                      f"module {i} path")
        if kind.endswith("Transformer"):
            out["subdir"] = path
        elif kind.endswith("Pooling"):
            cfg = _read_json(path / "config.json")
            if cfg.get("pooling_mode_cls_token"):
                out["pooling"] = "cls"
            elif cfg.get("pooling_mode_lasttoken"):
                out["pooling"] = "last"
            elif cfg.get("pooling_mode_max_tokens"):
                out["pooling"] = "max"
            else:
                out["pooling"] = "mean"
        elif kind.endswith("Normalize"):
            out["normalize"] = True
    sbert = _read_json(directory / "sentence_bert_config.json")
    if sbert.get("max_seq_length"):
        out["max_length"] = int(sbert["max_seq_length"])
    return out


def load_text_backbone(
    directory: Path, *, source: str, resolved: str, pooling: str | None = None,
    normalize: bool | None = None, max_length: int | None = None,
    trust_remote_code: bool = False, gguf_file: str | None = None,
) -> TextBackbone:
    """Build from a local transformers / sentence-transformers / transferkit folder.

    Loading reads safetensors and JSON only, and runs code shipped with the model only with
    ``trust_remote_code`` (the registry refuses such folders without it). ``gguf_file`` names
    a llama.cpp GGUF file in ``directory`` instead: transformers reads its config, tokenizer
    and (dequantised to float32) weights from it.
    """
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    settings: dict[str, Any] = {}
    settings.update(sentence_transformers_settings(directory))
    own = _read_json(directory / BACKBONE_FILE)  # what TextBackbone.save wrote, nothing else
    settings.update({k: own[k] for k in ("pooling", "normalize", "max_length") if k in own})
    model_dir = settings.get("subdir", directory)
    _check_tokenizer_files(model_dir)
    # A folder transferkit wrote leaves out the unused pooler on purpose (and a pretrained one
    # keeps its MLM head for further pretraining): transformers' load report would list those
    # keys on every load, so the report alone is dropped for those folders.
    quiet = quiet_load_report() if (directory / BACKBONE_FILE).is_file() else nullcontext()
    gguf = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        with quiet, _quiet_gguf() if gguf_file else nullcontext():
            config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code,
                                                **gguf)
            _check_size(config, model_dir, trust_remote_code)
            model = AutoModel.from_pretrained(model_dir, trust_remote_code=trust_remote_code,
                                              use_safetensors=True, dtype=torch.float32,
                                              **gguf, **_dense_gguf(gguf_file))
            tokenizer = AutoTokenizer.from_pretrained(model_dir,
                                                      trust_remote_code=trust_remote_code, **gguf)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise BackboneNotFoundError(
            f"{directory} is not a loadable transformers model ({e}). It needs config.json, "
            "*.safetensors weights and tokenizer files."
        ) from e
    # A GGUF config names no architectures; what transformers reads from GGUF is decoder LMs.
    is_decoder = bool(gguf_file) or any(a.endswith(_DECODER_SUFFIXES)
                                        for a in (config.architectures or []))
    if gguf_file:
        _forget_gguf(model)
    if getattr(model, "pooler", None) is not None:
        model.pooler = None  # BERT's pooler is unused by every pooling here; keep it out of DDP
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    model = attach_adapter(model, directory).eval()
    limit = min(int(getattr(tokenizer, "model_max_length", 512) or 512), 512)
    # Never longer than the model's position table: a 128-position model given 512 tokens
    # crashes (indexing past the table) instead of truncating.
    positions = position_limit(config)
    length = max_length or settings.get("max_length") or limit
    backbone = TextBackbone(
        model, tokenizer,
        pooling=pooling or settings.get("pooling") or ("last" if is_decoder else "mean"),
        normalize=settings.get("normalize", False) if normalize is None else normalize,
        max_length=min(length, positions) if positions else length,
        source=source, resolved=resolved,
    )
    backbone.model_dir = model_dir  # where the weights are: continued pretraining reloads them
    return backbone


def _dense_gguf(gguf_file: str | None) -> dict[str, Any]:
    """Load a GGUF file as a plain float32 model: every weight dequantised at load time (not
    left in GGUF blocks for a matmul kernel, which would be neither trainable nor savable)."""
    if not gguf_file:
        return {}
    from transformers import GgufConfig

    return {"quantization_config": GgufConfig(dequantize=True)}


def _forget_gguf(model: nn.Module) -> None:
    """A model loaded by :func:`_dense_gguf` holds plain float32 weights; drop the GGUF
    quantizer transformers leaves attached, which would refuse ``save_pretrained`` and mark
    the model untrainable (what ``model.dequantize()`` does after unpacking, which GGUF's
    quantizer does not implement because the load already unpacked everything)."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None and all(p.dtype == torch.float32 for p in model.parameters()):
        quantizer.remove_quantization_config(model)


@contextmanager
def _quiet_gguf():
    """transformers dequantises GGUF tensors under a plain tqdm bar, which its
    ``disable_progress_bar`` does not reach: silenced for the load, like every other bar."""
    from functools import partial

    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    bar = gguf_utils.tqdm
    gguf_utils.tqdm = partial(bar, disable=True)
    try:
        yield
    finally:
        gguf_utils.tqdm = bar


def _check_size(config: Any, model_dir: Path, trust_remote_code: bool) -> None:
    """Refuse a config.json that describes a far bigger model than the weights beside it.

    transformers builds the whole model before it finds that the weights do not fit: a small
    model's config edited to ``hidden_size: 20000`` took 23 GB and 80 s to fail. Built on
    the meta device the model costs nothing, and the weights' sizes come from the
    safetensors headers."""
    from safetensors import SafetensorError, safe_open
    from transformers import AutoModel

    stored = 0
    try:
        for file in model_dir.glob("*.safetensors"):
            with safe_open(str(file), "pt") as f:
                stored += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118
    except SafetensorError:
        return  # from_pretrained says what is wrong with the file
    if not stored:
        return  # ... or missing
    try:
        with torch.device("meta"):
            wanted = sum(p.numel() for p in AutoModel.from_config(
                config, trust_remote_code=trust_remote_code).parameters())
    except Exception:  # noqa: BLE001 - not buildable from its config: from_pretrained says why
        return
    if wanted > 4 * stored + 2**24:
        raise BackboneNotFoundError(
            f"{model_dir}/config.json describes a model of {wanted / 1e6:,.0f}M parameters, but "
            f"its weights hold {stored / 1e6:,.1f}M: the config was edited or belongs to other "
            "weights. Restore the model's own config.json (for a run folder: re-run the fit).")


def _check_tokenizer_files(model_dir: Path) -> None:
    """transformers opens ``fast_tokenizer_files`` of tokenizer_config.json joined to the
    folder, so an absolute name there would read elsewhere."""
    file = model_dir / "tokenizer_config.json"
    cfg = _read_json(file)
    names = cfg.get("fast_tokenizer_files") if isinstance(cfg, dict) else None
    for name in names if isinstance(names, list) else []:
        inside(model_dir, name, file, "fast_tokenizer_files")


# RoBERTa-likes number positions from padding_idx + 1, so two rows of their table are unusable.
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "mpnet", "longformer",
                     "data2vec-text")


def position_limit(config: Any) -> int | None:
    """How many tokens a transformers model can embed, from its config (None: no limit)."""
    n = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not n:
        return None
    if getattr(config, "model_type", "") in _OFFSET_POSITIONS:
        n -= int(getattr(config, "pad_token_id", 1) or 1) + 1
    return int(n)
