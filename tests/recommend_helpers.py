"""Small generated recommendation data (two tastes with distinct texts) and one run fitted on
it with the bundled MiniLM, shared by the recommend tests (the fit costs most of their time).
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

SCIFI = ["Starship", "Galaxy", "Nebula", "Asteroid", "Orbit", "Cosmos", "Martian", "Comet",
         "Quasar", "Rocket", "Alien", "Android", "Meteor", "Lunar", "Pulsar", "Warp"]
ROMANCE = ["Wedding", "Kiss", "Valentine", "Sweetheart", "Honeymoon", "Love Letter", "Bride",
           "Romeo", "Darling", "First Date", "Proposal", "Heartbeat", "Courtship", "Embrace",
           "Engagement", "Bouquet"]
MOVIELENS = Path(__file__).resolve().parents[2] / "shared" / "data"

_TMP = Path(tempfile.mkdtemp(prefix="tk-recommend-tests-"))
atexit.register(shutil.rmtree, _TMP, True)


def taste_of(item_id: str) -> str:
    return "scifi" if item_id.startswith("s") else "romance"


def write_tastes(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """Items of two kinds (space films, love stories) and users who each like one kind:
    every user takes 8 films of their kind and 1 of the other, at increasing times."""
    folder.mkdir(parents=True, exist_ok=True)
    items = [{"item_id": f"s{i}", "title": f"{w} Wars: a space battle among the stars",
              "genres": "Sci-Fi|Action"} for i, w in enumerate(SCIFI)]
    items += [{"item_id": f"r{i}", "title": f"The {w}: a tender love story",
               "genres": "Romance|Comedy"} for i, w in enumerate(ROMANCE)]
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(40):
        mine, other = ("s", "r") if u % 2 == 0 else ("r", "s")
        picks = [f"{mine}{i}" for i in rng.choice(16, 8, replace=False)]
        picks.append(f"{other}{rng.integers(16)}")
        for t, item in enumerate(rng.permutation(picks)):
            rows.append({"user_id": f"u{u}", "item_id": item, "rating": int(rng.integers(3, 6)),
                         "timestamp": 1_000_000 + 100 * u + t})
    interactions, items_path = folder / "interactions.csv", folder / "items.csv"
    pd.DataFrame(rows).to_csv(interactions, index=False)
    pd.DataFrame(items).to_csv(items_path, index=False)
    return interactions, items_path


@functools.cache
def tastes_files() -> tuple[Path, Path]:
    return write_tastes(_TMP / "data")


@functools.cache
def tastes_run():
    """The generated data fitted as users do it (no ALS grid: plumbing, not quality)."""
    from transferkit.workflows.recommend import recommend_fit

    interactions, items = tastes_files()
    return recommend_fit(interactions, items, out=_TMP / "run", item_text="title,genres",
                         cold_share=0.25, test_share=0.2, seed=0, tune="none")
