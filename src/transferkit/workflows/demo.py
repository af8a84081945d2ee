"""`make demo` / `transferkit demo`: the bundled MiniLM on embedded data, against scratch."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from .._outputs import staged_output
from ..config import FitConfig
from .fit import RunResult, fit_run

DEMO_BUDGETS = [8, 32]


def demo_files() -> tuple[Path, Path]:
    root = Path(str(files("transferkit") / "demo_data"))
    return root / "sms_spam.train.csv", root / "sms_spam.test.csv"


def run_demo(out: str | Path = "runs/demo", progress: Any = None) -> RunResult:
    train, test = demo_files()
    config = FitConfig(train=str(train), test=str(test), out=str(out), backbone="minilm",
                       strategy="probe", compare_baseline=True, compare_budgets=DEMO_BUDGETS,
                       overwrite=True)
    return fit_run(config, progress)


def write_examples(out: str | Path = "examples", overwrite: bool = False) -> Path:
    """Copy the small example files the README's quick-start uses (shipped in the package)
    into ``out``: a labelled CSV, a labelled test CSV and unlabelled new texts."""
    import shutil

    source = Path(str(files("transferkit") / "examples"))
    with staged_output(out, overwrite, kind="examples") as stage:
        for path in sorted(source.glob("*.csv")):
            shutil.copyfile(path, stage / path.name)
    return Path(out)
