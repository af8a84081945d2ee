"""Using a saved run: evaluate, predict, export, serve."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import TransferkitError
from .app import (
    Opt,
    _metrics_table,
    app,
    console,
    out,
)


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferkit fit`.")],
    data: Annotated[str, typer.Argument(help="Labelled data to evaluate on.")],
    text_column: Annotated[str | None, Opt(help="Text column.")] = None,
    label_column: Annotated[str | None, Opt(help="Label column.")] = None,
    output: Annotated[Path | None, Opt(help="Also write the metrics to this JSON file.")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --output.")] = False,
) -> None:
    """Evaluate a saved model on labelled data."""
    from .._io import write_json
    from .._outputs import check_output_file
    from ..classifier import Classifier

    if output:
        check_output_file(output, overwrite, inputs=[run, data])
    clf = Classifier.load(run)
    metrics = clf.evaluate(data, text_column=text_column, label_column=label_column)
    out.print(_metrics_table(metrics, f"{run} on {data}"))
    if output:
        write_json(output, metrics)
        out.print(f"metrics: {output}")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferkit fit`.")],
    inputs: Annotated[str, typer.Argument(help="File or folder to predict (labels optional).")],
    output: Annotated[Path, Opt(help="CSV to write: row, input, label, prob_<class>...")],
    text_column: Annotated[str | None, Opt(help="Text column.")] = None,
    max_text_chars: Annotated[int, Opt(help="Texts longer than this many characters are not "
                                            "predicted; their row says why.")] = 100_000,
    batch_size: Annotated[int, Opt(help="Batch size.")] = 32,
    engine: Annotated[str, Opt(help="torch, or onnx (ONNX Runtime on CPU, no torch needed; "
                                    "run `transferkit export RUN --onnx` first).")] = "torch",
    int8: Annotated[bool, Opt("--int8", help="onnx: the int8-quantised export "
                                             "(`export --onnx --int8`).")] = False,
    precision: Annotated[str, Opt(help="torch: auto (bf16 where fast), bf16, fp16 (GPU), "
                                       "fp32.")] = "auto",
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an existing --output.")] = False,
    support: Annotated[str | None, Opt(
        help="Labelled examples (CSV, image folder...) of the classes to predict, by "
             "distance to their prototypes: new classes, no training.")
    ] = None,
) -> None:
    """Predict labels and class probabilities for every row of a file."""
    from .._outputs import check_output_file
    from ..reuse.engines import load_engine
    from ..reuse.predict import predict_file

    inputs_used = (run, inputs, support)
    check_output_file(output, overwrite, inputs_used)  # before the model loads
    if support is not None:
        if engine != "torch":
            raise TransferkitError("--support builds prototypes with the torch engine: drop "
                                   "--engine onnx.")
        from ..classifier import Classifier

        model: Any = Classifier.load(run, batch_size=batch_size, precision=precision
                                     ).with_support(support, text_column=text_column)
    else:
        model = load_engine(run, engine, int8=int8, precision=precision, batch_size=batch_size)
    path, n_ok, n_bad = predict_file(model, inputs, output, text_column=text_column,
                                     overwrite=overwrite, inputs=inputs_used,
                                     max_text_chars=max_text_chars)
    skipped = f" ({n_bad} unreadable rows left with an empty label)" if n_bad else ""
    out.print(f"{n_ok} predictions written to {path}{skipped}")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferkit fit`.")],
    onnx: Annotated[bool, Opt("--onnx", help="Export to RUN/onnx/model.onnx (the only "
                                             "format so far).")] = False,
    int8: Annotated[bool, Opt("--int8", help="Also write a dynamically quantised int8 model "
                                             "and measure its accuracy change.")] = False,
    eval_data: Annotated[str | None, Opt(
        help="Labelled data for the int8 accuracy check (default: the run's test split, "
             "rebuilt from run.yaml).")] = None,
    text_column: Annotated[str | None, Opt(help="Text column of --eval-data.")] = None,
    label_column: Annotated[str | None, Opt(help="Label column of --eval-data.")] = None,
    batch_size: Annotated[int, Opt(help="Batch size for the parity and accuracy checks.")] = 32,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace an earlier export (only once "
                                                       "the new one passed its checks).")
                         ] = False,
) -> None:
    """Export a saved model to ONNX (backbone + head, LoRA merged), checked against PyTorch."""
    if not onnx:
        raise TransferkitError("Choose an export format: `transferkit export RUN --onnx`.")
    from ..reuse.onnx_export import export_onnx

    info = export_onnx(run, int8=int8, overwrite=overwrite, eval_data=eval_data,
                       text_column=text_column, label_column=label_column,
                       batch_size=batch_size)
    fp32 = info["fp32"]
    out.print(f"{run / 'onnx' / fp32['file']}: {fp32['bytes'] / 1e6:.1f} MB, exported in "
              f"{info['export_seconds']:.1f} s; max |Δ probability| vs PyTorch fp32 "
              f"{fp32['parity_max_abs_diff']:.1e} on {fp32['parity_examples']} inputs")
    if "edge cases only" in fp32["parity_source"]:  # said, not hidden in export.json
        console.print(f"[yellow]parity checked on {fp32['parity_source']}; pass --eval-data "
                      "FILE to check it on real inputs.[/]", highlight=False, soft_wrap=True)
    if info["int8"]:
        q = info["int8"]
        out.print(f"{run / 'onnx' / q['file']}: {q['bytes'] / 1e6:.1f} MB; accuracy "
                  f"{q['accuracy_int8']:.4f} vs {q['accuracy_fp32']:.4f} fp32 "
                  f"({q['accuracy_change'] * 100:+.2f} points) on {q['eval_examples']} examples")
    out.print(f"predict with: transferkit predict {run} INPUTS --output OUT.csv --engine onnx"
              + (" --int8" if info["int8"] else ""))


@app.command()
def serve(
    run: Annotated[Path, typer.Argument(help="Run folder written by `transferkit fit`.")],
    host: Annotated[str, Opt(help="Address to bind. Anything but loopback should have "
                                  "--api-key-env.")] = "127.0.0.1",
    port: Annotated[int, Opt(help="TCP port.")] = 8000,
    engine: Annotated[str, Opt(help="torch, or onnx (needs `transferkit export RUN --onnx`; "
                                    "does not import torch).")] = "torch",
    int8: Annotated[bool, Opt("--int8", help="onnx: serve the int8-quantised export.")] = False,
    precision: Annotated[str, Opt(help="torch: auto, bf16, fp16 (GPU) or fp32.")] = "auto",
    api_key_env: Annotated[str | None, Opt(
        help="Require the key held in this environment variable (X-API-Key header or "
             "Authorization: Bearer). /health stays open.")] = None,
    max_batch: Annotated[int, Opt(help="Most examples in one micro-batch (1 = one request "
                                       "at a time).", rich_help_panel="Batching")] = 32,
    max_wait_ms: Annotated[float, Opt(help="Longest wait for more requests to join a batch.",
                                      rich_help_panel="Batching")] = 5.0,
    model_batch: Annotated[int | None, Opt(help="Chunk size inside a micro-batch (examples "
                                                "sorted by length). [torch 8, onnx 4]",
                                           rich_help_panel="Batching")] = None,
    queue_size: Annotated[int, Opt(help="Queued requests before 503 + Retry-After.",
                                   rich_help_panel="Batching")] = 256,
    max_body_mb: Annotated[float, Opt(help="Largest request body in MiB.",
                                      rich_help_panel="Limits")] = 16.0,
    max_examples: Annotated[int, Opt(help="Most examples in one request.",
                                     rich_help_panel="Limits")] = 64,
    max_text_chars: Annotated[int, Opt(help="Longest text in characters.",
                                       rich_help_panel="Limits")] = 10_000,
    max_image_pixels: Annotated[int, Opt(help="Largest image (width x height).",
                                         rich_help_panel="Limits")] = 40_000_000,
    max_request_pixels: Annotated[int, Opt(help="Most decoded pixels in one request, all its "
                                                "images together.", rich_help_panel="Limits")
                                  ] = 64_000_000,
    max_audio_seconds: Annotated[float, Opt(help="Longest audio clip in seconds.",
                                            rich_help_panel="Limits")] = 30.0,
    header_timeout: Annotated[float, Opt(help="Seconds a client has to send a whole request "
                                              "head (408 after).",
                                         rich_help_panel="Connections")] = 10.0,
    body_timeout: Annotated[float, Opt(help="Longest pause, in seconds, inside a request body "
                                            "(408 after).", rich_help_panel="Connections")] = 20.0,
    max_connections: Annotated[int, Opt(help="Most open connections; from half of it on, a new "
                                             "one closes the slowest-sending.",
                                        rich_help_panel="Connections")] = 4096,
    shutdown_timeout: Annotated[float, Opt(help="Seconds accepted requests get to finish after "
                                                "SIGTERM; the rest get 503.",
                                           rich_help_panel="Connections")] = 30.0,
    threads: Annotated[int | None, Opt(help="torch: intra-op threads for the model (default: "
                                            "torch's, one per core).")] = None,
    access_log: Annotated[bool, Opt("--access-log", help="Log one line per request.")] = False,
) -> None:
    """Serve a saved model over HTTP: POST /predict, GET /health, /metadata, docs at /docs."""
    from ..reuse.serve import ConnectionLimits, Limits
    from ..reuse.serve import serve as serve_run

    limits = Limits(max_body_bytes=int(max_body_mb * 1024 * 1024), max_examples=max_examples,
                    max_text_chars=max_text_chars, max_image_pixels=max_image_pixels,
                    max_request_pixels=max_request_pixels, max_audio_seconds=max_audio_seconds)
    connections = ConnectionLimits(header_timeout_s=header_timeout, body_timeout_s=body_timeout,
                                   max_connections=max_connections,
                                   shutdown_timeout_s=shutdown_timeout)
    serve_run(run, host=host, port=port, engine=engine, int8=int8, precision=precision,
              model_batch=model_batch, max_batch=max_batch, max_wait_ms=max_wait_ms,
              queue_size=queue_size, limits=limits, connections=connections,
              api_key_env=api_key_env, access_log=access_log, threads=threads)
