"""SimCLR-style contrastive pretraining of timm image backbones, without labels.

Each training image is augmented twice (random resized crop, flip, colour jitter, random
greyscale; blur only above 64 px, as SimCLR does for CIFAR-sized images); the backbone and a
small projection MLP map both views, and NT-Xent (Chen et al. 2020) pulls the two views of an
image together and pushes them away from the other 2N-2 views of the batch. Only the backbone
is kept: the projection head is what absorbs the augmentation-specific information, and the
features *before* it transfer better (SimCLR, section 4.2).

The loss is sentence-transformers' ``MultipleNegativesRankingLoss`` (already a dependency)
with ``directions=("query_to_doc", "query_to_query")``, scale = 1 / temperature, cosine
similarity: for view 1 of image i its softmax runs over every view 2 (the positive among them)
and every other view 1, which is exactly NT-Xent's row for that anchor; applying it with the
views swapped and averaging gives the symmetric NT-Xent over all 2N anchors.

Augmentations draw from torch's global generator, whose state Accelerate checkpoints, so a
resumed run sees exactly the views an uninterrupted one would; the held-out evaluation draws
its (fixed-seed) views inside ``torch.random.fork_rng`` and never moves that generator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..config import PretrainConfig
from ..data.examples import IMAGE
from ..errors import ConfigError
from .common import holdout, run_objective

# Defaults for a small model on 2 CPU cores (measured here, resnet10t at 32 px, batch 128:
# ~235 images/s, a step of ~0.55 s, with one torch thread; see benchmarks/pretrain_images.py).
# lr 1e-3 (AdamW) is the usual small-scale SimCLR setting with Adam-type optimisers for a
# model trained from random weights; a pretrained backbone continues at 1e-4 so its
# features are refined, not overwritten. Batch 128 images (256 views, 254 negatives per
# anchor) is large enough for NT-Xent at temperature 0.2 and small enough for a thousand
# steps in a few minutes.
# 32 px from scratch (the CIFAR setting SimCLR reports for small images; 28 px MNIST-like
# inputs lose nothing); a pretrained backbone keeps its own input size unless --image-size
# is given, because its weights were learnt at that scale (slow on a CPU: pass a size).
DEFAULTS = {"scratch": {"lr": 1e-3, "batch_size": 128, "image_size": 32},
            "continued": {"lr": 1e-4, "batch_size": 64, "image_size": None}}
PROJECTION_DIM = 128  # SimCLR's output size; the hidden layer matches the backbone's width


def nt_xent(temperature: float):
    """``loss(z1 [N, D], z2 [N, D]) -> scalar``: symmetric NT-Xent over the 2N views."""
    try:  # sentence-transformers >= 6 moved the losses; the old path warns there
        from sentence_transformers.sentence_transformer.losses import (
            MultipleNegativesRankingLoss,
        )
    except ImportError:
        from sentence_transformers.losses import MultipleNegativesRankingLoss

    fn = MultipleNegativesRankingLoss(None, scale=1.0 / temperature,
                                      directions=("query_to_doc", "query_to_query"))

    def loss(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        z1, z2 = z1.float(), z2.float()
        return 0.5 * (fn.compute_loss_from_embeddings([z1, z2], None)
                      + fn.compute_loss_from_embeddings([z2, z1], None))

    return loss


def simclr_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Any:
    """SimCLR's augmentation at the backbone's input size and normalisation.

    Crops keep at least 20% of the image (SimCLR uses 8% at 224 px; on 28-32 px images that
    leaves a few pixels). On greyscale inputs (read as RGB with equal channels) saturation,
    hue and random greyscale change nothing, and brightness/contrast jitter still applies."""
    from torchvision import transforms as T

    steps = [T.RandomResizedCrop(size, scale=(0.2, 1.0),
                                 interpolation=T.InterpolationMode.BICUBIC),
             T.RandomHorizontalFlip(),
             T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
             T.RandomGrayscale(p=0.2)]
    if size > 64:
        steps.append(T.RandomApply([T.GaussianBlur(2 * (size // 20) + 1, (0.1, 2.0))], p=0.5))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


class TwoViews:
    """The loop's input side: images stay as given (arrays or paths, read per batch), and
    each training batch is two independently augmented views of every image."""

    modality = IMAGE

    def __init__(self, backbone: Any) -> None:
        cfg = backbone.data_config
        self.transform = simclr_transform(int(cfg["input_size"][-1]), cfg["mean"], cfg["std"])

    def prepare(self, images: list[Any]) -> list[Any]:
        return list(images)

    def cost(self, item: Any) -> int:
        return 0

    def collate(self, items: list[Any], augment: bool = False) -> dict[str, torch.Tensor]:
        from ..data.images import to_pil

        pil = [to_pil(x) for x in items]
        return {"view1": torch.stack([self.transform(im) for im in pil]),
                "view2": torch.stack([self.transform(im) for im in pil])}


class SimCLRObjective(nn.Module):
    def __init__(self, encoder: nn.Module, views: TwoViews, temperature: float) -> None:
        super().__init__()
        self.encoder = encoder
        width = int(encoder.feature_dim)
        self.projector = nn.Sequential(nn.Linear(width, width), nn.BatchNorm1d(width),
                                       nn.ReLU(inplace=True), nn.Linear(width, PROJECTION_DIM))
        self.backbone = views  # the loop's input protocol (not a module)
        self.loss = nt_xent(temperature)
        self.units_seen = 0

    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(pixel_values=pixel_values))

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.units_seen += int(view1.shape[0])
        # one pass over both views: batch norm normalises them together, as in SimCLR
        z1, z2 = self.embed(torch.cat([view1, view2])).chunk(2)
        return self.loss(z1, z2)


def heldout_metrics(objective: SimCLRObjective, images: list[Any], batch_size: int,
                    seed: int) -> dict[str, float]:
    """Loss and pair accuracy on the held-out images, the same views at every evaluation.

    ``valid_loss``: NT-Xent over chunks of ``batch_size`` images (as many negatives as a
    training batch, so it reads on the training loss's scale). ``valid_accuracy``: share of
    the 2N held-out views whose nearest other view (cosine, projection space) is their pair."""
    device = next(objective.parameters()).device
    z1s, z2s, losses, weights = [], [], [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for s in range(0, len(images), batch_size):
            batch = objective.backbone.collate(images[s:s + batch_size], augment=True)
            z = objective.embed(torch.cat([batch["view1"], batch["view2"]]).to(device))
            z1, z2 = z.float().chunk(2)
            if len(z1) > 1:
                losses.append(float(objective.loss(z1, z2)))
                weights.append(len(z1))
            z1s.append(z1.cpu())
            z2s.append(z2.cpu())
    z = nn.functional.normalize(torch.cat(z1s + z2s), dim=-1)
    n = len(z) // 2
    sim = z @ z.T
    sim.fill_diagonal_(-2.0)
    pair = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
    accuracy = float((sim.argmax(1) == pair).float().mean())
    loss = float(np.average(losses, weights=weights)) if losses else float("nan")
    return {"valid_loss": loss, "valid_accuracy": accuracy}


def _start_backbone(cfg: PretrainConfig) -> tuple[Any, str]:
    from ..backbones import load_backbone
    from ..backbones.vision import VisionBackbone, create_timm_backbone

    if cfg.scratch:
        size = cfg.image_size or DEFAULTS["scratch"]["image_size"]
        torch.manual_seed(cfg.seed)
        backbone = create_timm_backbone(cfg.source, source=cfg.source,
                                        resolved=f"timm {cfg.source}, random weights",
                                        pretrained=False, image_size=size)
        return backbone, f"scratch:{backbone.architecture}"
    backbone = load_backbone(cfg.source, image_size=cfg.image_size,
                             trust_remote_code=cfg.trust_remote_code)
    if not isinstance(backbone, VisionBackbone):
        raise ConfigError(f"--from {cfg.source} is a {backbone.modality} backbone; contrastive "
                          "image pretraining needs a timm image backbone (an image alias such "
                          "as efficientnet_lite0, a timm name, or a folder saved from one). "
                          "Use --modality text for text encoders.")
    return backbone, cfg.source


def pretrain_images(images: list[Any], cfg: PretrainConfig, stage: Path, checkpoint_dir: Path,
                    progress: Any = None, device: torch.device | None = None
                    ) -> dict[str, Any]:
    """SimCLR-pretrain a timm backbone on ``images``; write the backbone folder into ``stage``.

    ``images``: arrays or file paths (``read_corpus(..., "image")``). Early stopping and the
    best-weights restore run on the held-out NT-Xent loss (``valid_fraction`` of the images,
    at most ``valid_max``). ``stage`` receives ``train_log.jsonl`` and the backbone (weights
    as safetensors + ``transferkit_backbone.json``, no projection head), which
    ``load_backbone(stage)`` and every ``--backbone`` accept. Defaults: see ``DEFAULTS``."""
    backbone, start = _start_backbone(cfg)
    kind = "scratch" if cfg.scratch else "continued"
    lr = cfg.lr or DEFAULTS[kind]["lr"]
    batch_size = cfg.batch_size or DEFAULTS[kind]["batch_size"]
    train_idx, valid_idx = holdout(len(images), cfg.valid_fraction, cfg.valid_max, cfg.seed)
    if len(valid_idx) < 2:  # one held-out image has no negatives: no loss to score
        train_idx, valid_idx = np.arange(len(images)), valid_idx[:0]
    train_images = [images[i] for i in train_idx]
    valid_images = [images[i] for i in valid_idx]
    if len(train_images) < 2:
        raise ConfigError(f"Contrastive pretraining needs at least 2 training images; the "
                          f"corpus has {len(images)} ({len(valid_images)} held out). Add "
                          "images or lower --valid-fraction.")
    batch_size = min(batch_size, len(train_images))

    views = TwoViews(backbone)
    objective = SimCLRObjective(backbone, views, cfg.temperature)
    evaluator = None
    if valid_images:
        evaluator = lambda: heldout_metrics(  # noqa: E731
            objective, valid_images, batch_size, cfg.seed + 1)

    def sampler(epoch: int) -> list[list[int]]:
        """Seeded shuffles in full batches: a short last batch would have few negatives."""
        from ..train.sampler import bucketed_batches

        batches = bucketed_batches(np.zeros(len(train_images)), batch_size, cfg.seed, epoch,
                                   bucketed=False)
        return [b for b in batches if len(b) == batch_size]

    stage.mkdir(parents=True, exist_ok=True)
    result = run_objective(objective, train_images, cfg, lr=lr, batch_size=batch_size,
                           metric="loss", evaluator=evaluator, run_dir=stage,
                           checkpoint_dir=checkpoint_dir, progress=progress, device=device,
                           sampler=sampler)
    encoder = objective.encoder.cpu().eval()
    encoder.invalidate_fingerprint()
    encoder.save(stage)
    evals = [e for e in result["history"] if "valid_loss" in e]
    best = next((e for e in evals if e["step"] == result["best_step"]), None)
    return {
        "objective": "simclr", "kind": kind, "start": start,
        "architecture": encoder.architecture, "image_size": int(encoder.data_config[
            "input_size"][-1]), "feature_dim": encoder.feature_dim,
        "parameters": sum(p.numel() for p in encoder.parameters()),
        "temperature": cfg.temperature, "projection_dim": PROJECTION_DIM,
        "lr": lr, "batch_size": batch_size,
        "train_images": len(train_images), "valid_images": len(valid_images),
        "images_seen": result["units_seen"], "images_per_second": result["units_per_second"],
        "steps": result["steps"], "planned_steps": min(
            len(sampler(0)) * cfg.epochs, cfg.max_steps or len(sampler(0)) * cfg.epochs),
        "best_step": result["best_step"], "stopped_early": result["stopped_early"],
        "precision": result["precision"], "train_seconds": result["train_seconds"],
        "eval_seconds": result["eval_seconds"],
        "valid_loss_start": evals[0]["valid_loss"] if evals else None,
        "valid_loss_best": result["best_valid"],
        "valid_accuracy_start": evals[0]["valid_accuracy"] if evals else None,
        "valid_accuracy_best": best["valid_accuracy"] if best else None,
        "evaluations": [{k: e[k] for k in ("step", "valid_loss", "valid_accuracy")}
                        for e in evals],
    }
