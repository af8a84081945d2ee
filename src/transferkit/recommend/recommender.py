"""A fitted recommender: save, load, recommend, and place new items from their text.

The run folder holds ``config.json`` (what was fitted and how), ``users.json`` and
``items.json`` (ids in vector order), ``vectors.safetensors`` (every model's user and item
vectors and item bias, the item text embeddings, the text map, the training interactions
that are never recommended back) and ``backbone/`` (the text encoder, for new items).
Loading reads JSON and safetensors only: nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from .. import __version__
from ..config import did_you_mean
from ..data.examples import DataReport
from ..errors import ArtifactError, DataError
from .interactions import Catalogue, read_items
from .models import TextMap, Vectors, content_space

FORMAT = "transferkit-recommender"
FORMAT_VERSION = 1
VECTORS_FILE = "vectors.safetensors"
BACKBONE_DIR = "backbone"


def is_recommender_run(directory: str | Path) -> bool:
    try:
        config = json.loads((Path(directory) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and config.get("format") == FORMAT


class Recommender:
    """Every fitted model over one user and item index; ``default_model`` answers when no
    model is named."""

    def __init__(self, models: dict[str, Vectors], user_ids: list[str], item_ids: list[str],
                 item_names: list[str], seen: sp.csr_matrix, embeddings: np.ndarray,
                 text_map: TextMap | None, config: dict[str, Any],
                 directory: Path | None = None) -> None:
        self.models, self.user_ids, self.item_ids = models, user_ids, item_ids
        self.item_names, self.seen, self.embeddings = item_names, seen, embeddings
        self.text_map, self.config, self.directory = text_map, config, directory
        self._users = {u: i for i, u in enumerate(user_ids)}
        self.default_model = config["default_model"]
        self.n_fitted_items = int(config["split"]["items"])  # the rest came by with_new_items

    # -- using it -------------------------------------------------------------------------
    def user_index(self, user: str) -> int:
        user = str(user)
        if user not in self._users:
            raise DataError(
                f"Unknown user '{user}'{did_you_mean(user, self._users)}: the run knows "
                f"{len(self.user_ids):,} users (e.g. {', '.join(self.user_ids[:3])}), those "
                "with interactions in its training file. Check the id, or fit again with "
                "this user's interactions.")
        u = self._users[user]
        if self.seen.indptr[u] == self.seen.indptr[u + 1]:
            raise DataError(
                f"User '{user}' has an empty history: none of their interactions were used "
                "for training (all were held out for evaluation, on cold items or in the "
                "test), so the run knows nothing of their taste. Fit with --test-share 0 "
                "and --cold-share 0 to train on all of their interactions.")
        return u

    def model(self, name: str | None) -> Vectors:
        name = name or self.default_model
        if name not in self.models:
            raise DataError(f"Model '{name}' is not in this run{did_you_mean(name, self.models)}"
                            f"; it holds: {', '.join(self.models)}.")
        return self.models[name]

    def scores(self, user: str, model: str | None = None) -> np.ndarray:
        """Every item's score for ``user``: the very computation evaluation ran."""
        u = self.user_index(user)
        return self.model(model).scores(np.array([u]))[0]

    def recommend(self, user: str, k: int = 10, model: str | None = None,
                  exclude_seen: bool = True, only_new: bool = False) -> list[dict[str, Any]]:
        """The ``k`` best items for ``user`` (best first), leaving out what they already
        took (and with ``only_new``, the items known at fit time); equal scores keep the
        catalogue's order."""
        if k < 1:
            raise DataError(f"k must be at least 1 (got {k}).")
        scores = self.scores(user, model).astype(np.float64)
        if only_new:
            scores[:self.n_fitted_items] = -np.inf
        if exclude_seen:
            u = self._users[str(user)]
            scores[self.seen.indices[self.seen.indptr[u]:self.seen.indptr[u + 1]]] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        top = np.argsort(-scores, kind="stable")[:k]
        return [{"item": self.item_ids[i], "name": self.item_names[i],
                 "score": float(scores[i])} for i in top]

    def recommend_many(self, users: list[str], k: int = 10, model: str | None = None,
                       only_new: bool = False) -> dict[str, list[dict[str, Any]]]:
        for user in users:  # every id checked before any work: one message for a bad batch
            self.user_index(user)
        return {str(user): self.recommend(user, k, model, only_new=only_new)
                for user in users}

    # -- new items --------------------------------------------------------------------------
    def with_new_items(self, path: str | Path, *, item_column: str | None = None
                       ) -> Recommender:
        """A recommender whose catalogue also holds the items of ``path``, placed from their
        text alone (the hybrid's text map, the content model's embedding space): no model
        is refitted. ID-only models (ALS, BPR, popularity) cannot place them: they score 0."""
        report = DataReport()
        new = read_items(path, self.config["item_text"] or None,
                         item_column or self.config.get("item_column"), report)
        if report.issues:
            raise DataError(f"{Path(path).name}: new items must each have an id and text:\n  "
                            + "\n  ".join(report.lines()) + "\nFix these rows and run again.")
        known = set(self.item_ids)
        clash = [(i, o) for i, o in zip(new.ids, new.origins, strict=True) if i in known]
        if clash:
            raise DataError(f"{clash[0][1]}: item '{clash[0][0]}' is already in the run's "
                            f"catalogue ({len(clash)} such rows). A new item needs a new id; "
                            "remove known items from the file.")
        return self.with_items(new, self._embed(new))

    def with_items(self, new: Catalogue, embeddings: np.ndarray) -> Recommender:
        models = {}
        for name, v in self.models.items():
            if name == "hybrid" and self.text_map is not None:
                placed = self.text_map(embeddings)
            elif name == "content":
                placed = content_space(embeddings, v.params["center"])
            else:
                placed = np.zeros((len(new), v.items.shape[1]), np.float32)
            models[name] = Vectors(v.users, np.vstack([v.items, placed]),
                                   np.r_[v.bias, np.zeros(len(new), np.float32)], v.params)
        seen = sp.csr_matrix((self.seen.data, self.seen.indices, self.seen.indptr),
                             shape=(self.seen.shape[0], self.seen.shape[1] + len(new)))
        return Recommender(models, self.user_ids, self.item_ids + new.ids,
                           self.item_names + new.names, seen,
                           np.vstack([self.embeddings, embeddings]), self.text_map,
                           self.config, self.directory)

    def _embed(self, items: Catalogue) -> np.ndarray:
        from ..backbones.registry import load_from_folder
        from .embed import embed_texts

        info = self.config["backbone"]
        folder = (self.directory or Path(".")) / BACKBONE_DIR
        if not folder.is_dir():
            raise ArtifactError(f"{folder} is missing: the run cannot embed new items without "
                                "its text encoder. Fit the run again.")
        backbone = load_from_folder(folder, info["source"], f"run {self.directory}",
                                    {"trust_remote_code": False}, None)
        if backbone.fingerprint != info["fingerprint"]:
            raise ArtifactError(f"{folder}: the encoder does not match config.json (fingerprint"
                                f" {backbone.fingerprint} != {info['fingerprint']}); the folder "
                                "was changed. Fit the run again.")
        embeddings, _ = embed_texts(backbone, items.texts, items.origins,
                                    precision=self.config["embedding_precision"])
        return embeddings

    # -- the run folder ---------------------------------------------------------------------
    def save(self, directory: Path) -> None:
        """Write the model files into ``directory`` (a staged folder the caller moves)."""
        tensors = {"text.embeddings": self.embeddings,
                   "train.indptr": self.seen.indptr.astype(np.int64),
                   "train.indices": self.seen.indices.astype(np.int64)}
        for name, v in self.models.items():
            tensors |= {f"{name}.users": v.users, f"{name}.items": v.items,
                        f"{name}.bias": v.bias}
            if "center" in v.params:  # the content model's centre: an array, not JSON
                tensors[f"{name}.center"] = v.params["center"]
        if self.text_map is not None:
            tm = self.text_map
            for key in ("weight", "intercept", "anchors", "anchor_factors", "center"):
                if getattr(tm, key) is not None:
                    tensors[f"map.{key}"] = getattr(tm, key)
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
                  str(directory / VECTORS_FILE), metadata={"format": FORMAT})
        config = {**self.config, "format": FORMAT, "format_version": FORMAT_VERSION,
                  "transferkit_version": __version__,
                  "models": {n: _jsonable(v.params) for n, v in self.models.items()},
                  "text_map": self.text_map.params if self.text_map else None}
        _write(directory / "config.json", config)
        _write(directory / "users.json", self.user_ids)
        _write(directory / "items.json", {"ids": self.item_ids, "names": self.item_names})

    @classmethod
    def load(cls, directory: str | Path) -> Recommender:
        directory = Path(directory)
        if not is_recommender_run(directory):
            raise ArtifactError(f"{directory} is not a run of `transferkit recommend fit` (its "
                                "config.json is missing or of another kind). Pass the --out "
                                "folder of a recommend fit.")
        config = _read(directory / "config.json")
        if config.get("format_version", 0) > FORMAT_VERSION:
            raise ArtifactError(f"{directory} was written by a newer transferkit "
                                f"({config.get('transferkit_version')}); upgrade to load it.")
        users, items = _read(directory / "users.json"), _read(directory / "items.json")
        try:
            t = load_file(str(directory / VECTORS_FILE))
        except (OSError, SafetensorError) as e:
            raise ArtifactError(f"{directory / VECTORS_FILE} is missing or corrupt ({e}). "
                                "Fit the run again.") from e
        n_users, n_items = len(users), len(items["ids"])
        try:
            models = {name: Vectors(t[f"{name}.users"], t[f"{name}.items"], t[f"{name}.bias"],
                                    {**params, **({"center": t[f"{name}.center"]}
                                                  if f"{name}.center" in t else {})})
                      for name, params in config["models"].items()}
            seen = sp.csr_matrix((np.ones(len(t["train.indices"]), np.float32),
                                  t["train.indices"], t["train.indptr"]),
                                 shape=(n_users, n_items))
            text_map = None
            if config.get("text_map"):
                p = config["text_map"]
                text_map = TextMap(p["kind"], weight=t.get("map.weight"),
                                   intercept=t.get("map.intercept"), k=int(p.get("k", 0)),
                                   anchors=t.get("map.anchors"),
                                   anchor_factors=t.get("map.anchor_factors"),
                                   center=t["map.center"], params=p)
        except (KeyError, ValueError, TypeError) as e:
            raise ArtifactError(f"{directory}: {VECTORS_FILE} does not match config.json ({e})"
                                "; the folder was edited or damaged. Fit the run again.") from e
        for name, v in models.items():
            if v.users.shape[0] != n_users or v.items.shape[0] != n_items \
                    or v.bias.shape != (n_items,) or v.users.shape[1] != v.items.shape[1]:
                raise ArtifactError(f"{directory}: the {name} vectors do not fit users.json and"
                                    " items.json; the folder was edited or damaged. Fit again.")
        return cls(models, users, items["ids"], items["names"], seen, t["text.embeddings"],
                   text_map, config, directory)


def _jsonable(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if not isinstance(v, np.ndarray)}


def _write(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False), encoding="utf-8")


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{path} is missing or not valid JSON ({e}). Fit the run again."
                            ) from e
