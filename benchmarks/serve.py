"""HTTP serving under load: micro-batching vs one request at a time, torch vs ONNX Runtime.

The served model is the bundled MiniLM with a probe fitted on sms_spam (saved to a temporary
folder and exported to ONNX, fp32 and int8). Each contender is its own `transferkit serve`
process on a loopback port; the load comes from a separate process (a lean asyncio HTTP/1.1
keep-alive client: httpx spent ~1 ms of CPU per request on these shared cores) with 32
concurrent clients, one text per request, for --seconds after a --warmup. Contenders
alternate within each round; medians over --rounds are reported. Bounded: every client stops
at the deadline, and only 127.0.0.1 is ever contacted.

    python benchmarks/serve.py [--seconds 30] [--warmup 3] [--rounds 3] [--clients 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
HERE = Path(__file__).resolve().parent

CONTENDERS = {
    "torch, micro-batched": ["--engine", "torch"],
    "torch, one at a time": ["--engine", "torch", "--max-batch", "1"],
    "onnx fp32, micro-batched": ["--engine", "onnx"],
    "onnx int8, micro-batched": ["--engine", "onnx", "--int8"],
}


# -- the load generator (runs in its own process) --------------------------------------------
async def _client(port: int, bodies: list[bytes], offset: int, warm_until: float,
                  deadline: float, out: dict[str, Any]) -> None:
    reader = writer = None
    i = offset
    while time.perf_counter() < deadline:
        if writer is None:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        body = bodies[i % len(bodies)]
        i += 1
        request = (b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                   b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body)) + body
        start = time.perf_counter()
        try:
            writer.write(request)
            status = int((await reader.readline()).split()[1])
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            payload = await reader.readexactly(length)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            out["errors"] += 1
            writer.close()
            writer = None
            continue
        end = time.perf_counter()
        if status != 200 or not payload.startswith(b'{"predictions"'):
            out["failed"] += 1
        elif start >= warm_until and end <= deadline:
            out["latencies"].append(end - start)
    if writer is not None:
        writer.close()


async def _load(port: int, texts: list[str], clients: int, warmup: float, seconds: float
                ) -> dict[str, Any]:
    bodies = [json.dumps({"texts": [t]}).encode() for t in texts]
    out: dict[str, Any] = {"latencies": [], "failed": 0, "errors": 0}
    now = time.perf_counter()
    warm_until, deadline = now + warmup, now + warmup + seconds
    await asyncio.gather(*[_client(port, bodies, k * 997, warm_until, deadline, out)
                           for k in range(clients)])
    return out


def loadgen(args: argparse.Namespace) -> None:
    import numpy as np

    texts = json.loads(Path(args.texts_file).read_text())
    out = asyncio.run(_load(args.port, texts, args.clients, args.warmup, args.seconds))
    lat = np.asarray(out["latencies"]) * 1000
    print(json.dumps({
        "requests": int(lat.size), "throughput": lat.size / args.seconds,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "failed": out["failed"], "errors": out["errors"]}))


# -- the driver ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


def _start(run: Path, flags: list[str]) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "transferkit", "serve", str(run), "--port",
                             str(port), *flags], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server {flags} exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if _get(port, "/health")["status"] == "ok":
                return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server {flags} did not start")


def _measure(run: Path, flags: list[str], texts_file: Path, args: argparse.Namespace
             ) -> dict[str, Any]:
    proc, port = _start(run, flags)
    try:
        load_before = os.getloadavg()[0]
        gen = subprocess.run(
            [sys.executable, __file__, "loadgen", "--port", str(port), "--texts-file",
             str(texts_file), "--clients", str(args.clients), "--warmup", str(args.warmup),
             "--seconds", str(args.seconds)], capture_output=True, text=True, check=True,
            timeout=args.warmup + args.seconds + 120)
        result = json.loads(gen.stdout.strip().splitlines()[-1])
        result["mean_batch"] = _get(port, "/metadata")["serving"]["mean_batch"]
        result["loadavg_1min"] = max(load_before, os.getloadavg()[0])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    result["exit_code"] = code
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    sub = ap.add_subparsers(dest="command")
    gen = sub.add_parser("loadgen")
    gen.add_argument("--port", type=int, required=True)
    gen.add_argument("--texts-file", required=True)
    for p in (ap, gen):
        p.add_argument("--clients", type=int, default=32)
        p.add_argument("--warmup", type=float, default=3.0)
        p.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-texts", type=int, default=1000)
    ap.add_argument("--contenders", default=";".join(CONTENDERS),
                    help="semicolon-separated subset of: " + "; ".join(CONTENDERS))
    ap.add_argument("--run", help="serve this already exported run folder instead of fitting "
                                  "and exporting one (must have onnx/ for the onnx contenders)")
    args = ap.parse_args()
    if args.command == "loadgen":
        return loadgen(args)

    import numpy as np
    import onnxruntime
    import torch
    import uvicorn
    from common import entry, median, print_table, served_model, sms_texts, write_results

    import transferkit

    names = [n.strip() for n in args.contenders.split(";")]
    with tempfile.TemporaryDirectory(prefix="tk-bench-serve-") as tmp:
        tmp_path = Path(tmp)
        run = served_model(tmp_path, args.run, args.train_texts, onnx=True)
        texts_file = tmp_path / "texts.json"
        texts_file.write_text(json.dumps(sms_texts()))
        results: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in names:
                res = _measure(run, CONTENDERS[name], texts_file, args)
                results[name].append(res)
                print(f"round {r + 1} {name}: {res['throughput']:.0f} req/s, p50 "
                      f"{res['p50_ms']:.0f} ms, p99 {res['p99_ms']:.0f} ms, mean batch "
                      f"{res['mean_batch']:.1f}, failed {res['failed'] + res['errors']}, "
                      f"load {res['loadavg_1min']:.1f}, exit {res['exit_code']}", flush=True)

    def med(name: str, key: str) -> float:
        return median([x[key] for x in results[name]])

    versions = {"transferkit": transferkit.__version__, "torch": torch.__version__,
                "onnxruntime": onnxruntime.__version__, "uvicorn": uvicorn.__version__}
    common_extra = {"clients": args.clients, "seconds": args.seconds, "warmup": args.warmup,
                    "texts_per_request": 1}

    def detail(name: str) -> dict[str, Any]:
        return {"throughput": med(name, "throughput"), "p50_ms": med(name, "p50_ms"),
                "p99_ms": med(name, "p99_ms"), "mean_batch": med(name, "mean_batch"),
                "failed": int(sum(x["failed"] + x["errors"] for x in results[name])),
                "exit_codes": sorted({x["exit_code"] for x in results[name]}),
                "max_loadavg_1min": float(np.max([x["loadavg_1min"] for x in results[name]]))}

    pairs = [("torch, micro-batched", "torch, one at a time", "micro-batching vs one request "
              "at a time (torch)"),
             ("onnx fp32, micro-batched", "torch, micro-batched", "onnx fp32 vs torch"),
             ("onnx int8, micro-batched", "torch, micro-batched", "onnx int8 vs torch")]
    entries = []
    for ours, peer, title in pairs:
        if ours not in results or peer not in results:
            continue
        extra = {"ours_is": ours, "peer_is": peer, "ours_detail": detail(ours),
                 "peer_detail": detail(peer), **common_extra}
        entries.append(entry(f"{title}: throughput", med(ours, "throughput"),
                             med(peer, "throughput"), "req/s", args.rounds, True, versions,
                             **extra))
        entries.append(entry(f"{title}: p99 latency", med(ours, "p99_ms"), med(peer, "p99_ms"),
                             "ms", args.rounds, False, versions, **extra))
    print_table(entries)
    for n in names:
        d = detail(n)
        print(f"{n}: {d['throughput']:.0f} req/s, p50 {d['p50_ms']:.0f} ms, p99 "
              f"{d['p99_ms']:.0f} ms, mean batch {d['mean_batch']:.1f}, failed {d['failed']}, "
              f"exit codes {d['exit_codes']}, max load {d['max_loadavg_1min']:.1f}")
    print(f"results: {write_results('serve', entries)}")


if __name__ == "__main__":
    main()
