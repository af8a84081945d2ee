"""Meta-learning on base classes, episodes on new ones."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from .app import (
    Opt,
    _with_progress,
    app,
    out,
)


def _class_list(classes: str | None) -> list[str] | None:
    return [c.strip() for c in classes.split(",") if c.strip()] if classes else None


@app.command("meta-train")
def meta_train(
    data: Annotated[str, typer.Argument(help="Labelled data holding the base classes.")],
    out_dir: Annotated[str, Opt("--out", help="Run folder to write (a protonet artifact).")],
    classes: Annotated[str | None, Opt(help="Base classes, comma-separated (default: all).")
                       ] = None,
    backbone: Annotated[str, Opt(help="Pretrained backbone to meta-train.")] = "minilm",
    valid: Annotated[str | None, Opt(help="Validation data of the base classes: early "
                                          "stopping on episode accuracy.")] = None,
    per_class: Annotated[int | None, Opt(help="Use at most N examples per base class.")
                         ] = None,
    n_way: Annotated[int, Opt(help="Classes per episode.")] = 5,
    k_shot: Annotated[int, Opt(help="Support examples per class and episode.")] = 5,
    n_query: Annotated[int, Opt(help="Query examples per class and episode.")] = 5,
    episodes: Annotated[int, Opt(help="Training episodes (one optimizer step each).")] = 100,
    lr: Annotated[float, Opt(help="Peak learning rate.")] = 5e-5,
    scale: Annotated[float, Opt(help="Distance scale of the prototype softmax, for unit-norm "
                                     "features (divided by the mean squared norm otherwise).")
                     ] = 10.0,
    inner_steps: Annotated[int, Opt(help="First-order MAML for the head (fo-Proto-MAML): "
                                         "gradient steps of the prototype head on each "
                                         "support set, in training and on new classes; 0: "
                                         "a plain prototypical network.")] = 0,
    inner_lr: Annotated[float, Opt(help="Learning rate of those steps, for unit-norm "
                                        "features (divided by the mean squared norm).")
                        ] = 3.0,
    text_column: Annotated[str | None, Opt(help="Text column.")] = None,
    label_column: Annotated[str | None, Opt(help="Label column.")] = None,
    seed: Annotated[int, Opt(help="Seed for episodes and training.")] = 0,
    batch_size: Annotated[int, Opt(help="Batch size for feature extraction.")] = 32,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --out folder.")
                         ] = False,
) -> None:
    """Meta-train a prototypical network (or fo-Proto-MAML) on base classes (N-way K-shot
    episodes)."""
    from .._outputs import check_out_folder
    from ..adapt.protonet import meta_train_data
    from ..classifier import Classifier

    check_out_folder(out_dir, overwrite, inputs=[data, valid, backbone])  # before training
    dataset = meta_train_data(data, _class_list(classes), valid=valid, per_class=per_class,
                              seed=seed, text_column=text_column, label_column=label_column)
    options = {"n_way": n_way, "k_shot": k_shot, "n_query": n_query, "episodes": episodes,
               "lr": lr, "scale": scale, "inner_steps": inner_steps, "inner_lr": inner_lr}
    clf = _with_progress(lambda progress: _fit_with_progress(
        Classifier(backbone, "protonet", strategy_options=options, seed=seed,
                   batch_size=batch_size), dataset, progress))
    clf.save(out_dir, overwrite=overwrite, inputs=[data, valid, backbone])
    info = clf.fit_info.get("meta_train", {})
    out.print(f"meta-trained {n_way}-way {k_shot}-shot on {len(dataset.classes)} base classes "
              f"({len(dataset.train)} examples): {info.get('steps')} episodes in "
              f"{info.get('train_seconds', 0):.1f} s")
    out.print(f"run folder: {Path(out_dir).resolve()}")
    out.print(f"evaluate on new classes: transferkit meta-eval {out_dir} DATA --classes ...")


def _fit_with_progress(clf: Any, dataset: Any, progress: Any) -> Any:
    clf.context.progress = progress
    return clf.fit(dataset)


@app.command("meta-eval")
def meta_eval(
    model: Annotated[str, typer.Argument(help="A run folder (protonet or any model), or a "
                                              "backbone name for the raw-feature baseline.")],
    data: Annotated[str, typer.Argument(help="Labelled data of the held-out classes.")],
    classes: Annotated[str | None, Opt(help="Classes to draw episodes from, comma-separated "
                                            "(default: all).")] = None,
    n_way: Annotated[int, Opt(help="Classes per episode.")] = 5,
    k_shot: Annotated[int, Opt(help="Support examples per class and episode.")] = 5,
    n_query: Annotated[int, Opt(help="Query examples per class and episode.")] = 15,
    episodes: Annotated[int, Opt(help="Episodes (600+ for a tight confidence interval).")
                        ] = 600,
    seed: Annotated[int, Opt(help="Seed for the episodes.")] = 0,
    inner_steps: Annotated[int | None, Opt(help="Gradient steps of the prototype head on each "
                                                "episode's support (default: the run's own, "
                                                "from meta-train; 0: nearest prototype).")
                           ] = None,
    inner_lr: Annotated[float | None, Opt(help="Learning rate of those steps (default: the "
                                               "run's own, else 3.0).")] = None,
    text_column: Annotated[str | None, Opt(help="Text column.")] = None,
    label_column: Annotated[str | None, Opt(help="Label column.")] = None,
    split: Annotated[str, Opt(help="Split to use when DATA holds several.")] = "test",
    batch_size: Annotated[int, Opt(help="Batch size for feature extraction.")] = 32,
    output: Annotated[Path | None, Opt(help="Also write the result to this JSON file.")
                      ] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --output.")] = False,
) -> None:
    """N-way K-shot accuracy on held-out classes, mean and 95% CI over many episodes."""
    import numpy as np

    from .._io import write_json
    from .._outputs import check_output_file
    from ..adapt import TransferModel
    from ..adapt.protonet import INNER_LR, meta_evaluate, read_labelled
    from ..classifier import Classifier

    if output:
        check_output_file(output, overwrite, inputs=[model, data])
    if (Path(model) / "config.json").is_file():
        clf = Classifier.load(model, batch_size=batch_size)
    else:
        clf = Classifier(model, batch_size=batch_size)
        clf.model = TransferModel(clf.resolve_backbone(), [])
    examples = read_labelled(data, _class_list(classes), text_column=text_column,
                             label_column=label_column, split=split)
    found = sorted(set(examples.labels or []))
    labels = np.array([found.index(y) for y in examples.labels or []])
    feats = _with_progress(lambda progress: _features(clf, examples, progress))
    info = clf.fit_info  # a raw backbone has none: nearest prototype, unless told
    steps = inner_steps if inner_steps is not None else info.get("inner_steps", 0)
    result = meta_evaluate(feats, labels, found, n_way=n_way, k_shot=k_shot, n_query=n_query,
                           episodes=episodes, seed=seed, scale=info.get("scale"),
                           inner_steps=steps, inner_lr=inner_lr or info.get("inner_lr", INNER_LR))
    result["model"] = model
    adapted = f" after {steps} steps on each support" if steps else ""
    out.print(f"{n_way}-way {k_shot}-shot accuracy{adapted} of {model} on {len(found)} classes: "
              f"{result['accuracy']:.4f} ± {result['ci95']:.4f} (95% CI, {episodes} episodes; "
              f"chance {1 / n_way:.2f})")
    if output:
        write_json(output, result)
        out.print(f"result: {output}")


def _features(clf: Any, examples: Any, progress: Any) -> Any:
    clf.context.progress = progress
    return clf.context.features(clf.model, examples, "features")
