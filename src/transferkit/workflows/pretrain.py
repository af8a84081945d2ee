"""``transferkit pretrain``: self-supervised pretraining on unlabelled data -> a backbone."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from .. import __version__, git_commit
from .._io import ordinary_permissions, write_json, write_text
from .._outputs import check_out_folder, checkpoint_dir_for, staged_output
from ..backbones import load_backbone
from ..classifier import seed_everything
from ..config import PretrainConfig, dump_yaml
from ..errors import ConfigError
from ..evaluate.report import write_model_card
from ..pretrain.corpus import read_corpus
from ..train.device import resolve_device
from .fit import Progress


def pretrain(corpus: str | Path | list[str | Path], *, out: str | Path = "runs/pretrained",
             progress: Progress | None = None, **options: Any) -> dict[str, Any]:
    """Self-supervised pretraining on unlabelled data; returns the run's summary.

    Text: continued masked-LM from ``source`` (any encoder ``load_backbone`` resolves), or
    ``scratch=True`` with ``size`` tiny|mini|small and a WordPiece tokenizer trained on the
    corpus. Images (``modality="image"``): SimCLR on ``source`` (pretrained weights, or the
    architecture with random weights when ``scratch=True``). Every option is a
    ``PretrainConfig`` field. ``out`` becomes a backbone folder: ``Classifier(out)``,
    ``fit --backbone OUT`` and the rest accept it."""
    sources = [str(c) for c in (corpus if isinstance(corpus, list) else [corpus])]
    try:
        config = PretrainConfig(corpus=sources, out=str(out), **options)
    except ValueError as e:  # pydantic: a bad option value or an unknown option
        raise ConfigError(f"Invalid pretraining option: {e}") from e
    return pretrain_run(config, progress)


def pretrain_run(config: Any, progress: Progress | None = None) -> dict[str, Any]:
    """Everything ``transferkit pretrain`` does: corpus -> objective -> backbone folder."""
    if config.modality == "text" and config.scratch == bool(config.source):
        raise ConfigError("Text pretraining needs exactly one of --from BACKBONE (continue "
                          "pretraining it) or --scratch --size tiny|mini|small.")
    if config.modality == "image" and not config.source:
        raise ConfigError("Image pretraining needs --from: a timm name or backbone (with "
                          "--scratch, only its architecture is used, with random weights).")
    start = time.perf_counter()
    inputs = [*config.corpus, config.source, config.tokenizer]
    check_out_folder(config.out, config.overwrite, inputs)  # before the corpus is read
    items, report = read_corpus(config.corpus, config.modality, config.text_column)
    seed_everything(config.seed)
    device = resolve_device(config.device)
    out = Path(config.out)
    # Under `accelerate launch` every rank trains; only rank 0 writes the backbone folder.
    main_process = int(os.environ.get("RANK", "0")) == 0
    with staged_output(out, config.overwrite, main_process, kind="backbone",
                       inputs=inputs) as stage:
        if config.modality == "text":
            from ..pretrain.text import pretrain_text

            summary = pretrain_text(items, config, stage, checkpoint_dir_for(out), progress,
                                    device)
        else:
            from ..pretrain.image import pretrain_images

            summary = pretrain_images(items, config, stage, checkpoint_dir_for(out), progress,
                                      device)
        summary = {"corpus": report, **summary, "total_seconds": time.perf_counter() - start,
                   "version": __version__, "commit": git_commit(), "torch": torch.__version__}
        if not main_process:
            return {"out": out, **summary}
        load_backbone(str(stage))  # the folder must load as a backbone before it is kept
        write_text(stage / "pretrain.yaml", dump_yaml(config))
        write_json(stage / "pretrain.json", summary)
        write_model_card(stage, "backbone_card.md.j2", version=__version__, config=config,
                         s=summary)
        ordinary_permissions(stage)  # safetensors writes 0600 files
    return {"out": out, **summary}
