"""LoRA through peft: low-rank adapters on the backbone's projections, plus the head."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from ..errors import ConfigError
from ..train.optim import ParamGroup
from .base import register
from .finetune import FineTuneStrategy
from .model import TransferModel


def auto_target_modules(model: nn.Module) -> list[str] | str:
    """Where adapters go, found from the architecture rather than a hand-kept table:
    peft's own per-model-type defaults for transformers (BERT-likes: query/value; GPT-2:
    c_attn; Llama: q_proj/v_proj), else every linear layer and 1x1 convolution inside the
    repeated blocks (timm ViTs: qkv/proj/fc1/fc2; conv nets: the pointwise convs)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type:
        from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as mapping

        if model_type in mapping:
            return list(mapping[model_type])
        return "all-linear"
    names = []
    for name, module in model.named_modules():
        if "blocks" not in name and "stages" not in name and "layers" not in name:
            continue
        if isinstance(module, nn.Linear) or (
                isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1)
                and module.groups == 1):
            names.append(name)
    if not names:
        raise ConfigError("Found no linear or 1x1 conv layers for LoRA; pass target_modules.")
    return names


@register
class LoRA(FineTuneStrategy):
    """Low-rank adapters (Hu et al. 2022): small trainable matrices beside frozen weights.

    Options: ``r``, ``alpha``, ``dropout``, ``target_modules`` (found automatically), ``merge``
    (fold the adapter into the weights when training ends, so the saved model is a plain
    backbone; otherwise the adapter is saved beside the untouched base weights)."""

    name = "lora"
    option_defaults: ClassVar[dict[str, Any]] = {"lr": 5e-4}
    option_flags: ClassVar[dict[str, str]] = {"r": "lora-r", "alpha": "lora-alpha",
                                              "dropout": "lora-dropout"}
    option_help: ClassVar[dict[str, str]] = {
        "r": "LoRA rank.", "alpha": "LoRA alpha (the update is scaled by alpha / r).",
        "dropout": "Dropout on the LoRA branch.",
        "target_modules": "Module names the adapter wraps (default: found for the "
                          "architecture).",
        "merge": "Fold the adapter into the weights when training ends, so the saved model "
                 "is a plain backbone.",
    }

    def __init__(self, r: int = 8, alpha: int = 16, dropout: float = 0.1,
                 target_modules: list[str] | None = None, merge: bool = False,
                 **options: Any) -> None:
        super().__init__(**options)
        if r < 1:
            raise ConfigError("LoRA rank r must be >= 1.")
        self.r, self.alpha, self.dropout = r, alpha, dropout
        self.target_modules, self.merge = target_modules, merge

    def options(self) -> dict[str, Any]:
        return {"r": self.r, "alpha": self.alpha, "dropout": self.dropout,
                "target_modules": self.target_modules, "merge": self.merge,
                **super().options()}

    def prepare_backbone(self, model: TransferModel) -> None:
        from peft import LoraConfig, get_peft_model

        inner = model.backbone.model
        targets = self.target_modules or auto_target_modules(inner)
        config = LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                            target_modules=targets, bias="none")
        model.backbone.model = get_peft_model(inner, config)

    def plan(self, model: TransferModel) -> tuple[list[ParamGroup], list[nn.Module]]:
        cfg = self.train_config
        adapters = [p for n, p in model.backbone.named_parameters() if "lora_" in n]
        return [ParamGroup(list(model.head.parameters()), cfg.head_lr or cfg.lr, 0, "head"),
                ParamGroup(adapters, cfg.lr, 0, "lora")], []

    def finish_backbone(self, model: TransferModel) -> None:
        if self.merge:
            model.backbone.model = model.backbone.model.merge_and_unload()
