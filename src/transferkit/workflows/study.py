"""``transferkit study``: what transfer saves on your data, every strategy x budget x seed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .._io import write_json
from .._outputs import check_out_folder, mark_folder
from ..data import load_data
from ..errors import ArtifactError, ConfigError
from ..evaluate.study import StudyPlan, parse_budgets, run_study
from .fit import Progress


def study(
    train: str | Path, *, test: str | Path | None = None, valid: str | Path | None = None,
    backbone: str = "minilm", budgets: str | list[int | str] = "8,32,128,512,all",
    strategies: str | list[str] = "scratch,baselines,probe,partial,lora,full", seeds: int = 3,
    out: str | Path = "runs/study", epochs: int = 2, text_column: str | None = None,
    label_column: str | None = None, image_size: int | None = None, precision: str = "auto",
    batch_size: int = 32, seed: int = 0, overwrite: bool = False,
    strategy_options: dict[str, dict[str, Any]] | None = None,
    progress: Progress | None = None, clip_seconds: float | None = None,
) -> dict[str, Any]:
    """Measure what transfer saves on your data: every strategy at every label budget, for
    several seeds, on one held-out test set. Finished cells are kept in ``out/cells``, so
    running the same call again after an interruption only runs what is missing."""
    out = Path(out)
    check_out_folder(out, overwrite=True, inputs=[train, valid, test])  # links, inputs, cwd
    plan = StudyPlan(
        budgets=parse_budgets(budgets) if isinstance(budgets, str) else list(budgets),
        strategies=[s.strip() for s in strategies.split(",")] if isinstance(strategies, str)
        else list(strategies),
        seeds=[seed + i for i in range(seeds)], backbone=backbone, epochs=epochs,
        batch_size=batch_size, precision=precision, image_size=image_size,
        clip_seconds=clip_seconds, strategy_options=dict(strategy_options or {}))
    plan.validate()
    stray = sorted(set(plan.strategy_options) - set(plan.strategies))
    if stray:
        raise ConfigError(f"strategy_options name {', '.join(stray)}, which this study does not "
                          f"run (its strategies: {', '.join(plan.strategies)}).")
    data = load_data(train, valid, test, text_column=text_column, label_column=label_column,
                     seed=seed)
    plan.resolve(data.modality)
    identity = {"data": data.train.fingerprint() + data.test.fingerprint(),
                "backbone": backbone, "epochs": epochs, "image_size": image_size,
                "precision": precision, "batch_size": batch_size}
    if plan.strategy_options:  # only when set: studies made before the option still resume
        identity["strategy_options"] = plan.strategy_options
    if clip_seconds is not None:  # the same rule
        identity["clip_seconds"] = clip_seconds
    marker = out / "study_identity.json"
    started = out.is_dir() and any(out.iterdir())
    if started and not overwrite and not marker.is_file():
        raise ArtifactError(f"{out} is a transferkit folder but not a study; choose another "
                            "--out, or pass --overwrite to replace it.")
    if started and not overwrite and _read_json(marker) != identity:
        raise ArtifactError(
            f"{out} holds a study of other data or settings; its finished cells cannot be "
            "reused. Choose another --out, or pass --overwrite to start it afresh.")

    def claim_out() -> None:
        """Called once everything is validated and the backbone has loaded."""
        if started and overwrite:
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        mark_folder(out, "study")
        write_json(marker, identity)

    return run_study(data, plan, out, progress, claim_out)


def _read_json(path: Path) -> Any:

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
