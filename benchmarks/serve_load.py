"""`transferkit serve` under attack: half-open connections, and SIGTERM under load (issue 16).

The served model is the bundled MiniLM with a probe fitted on sms_spam (or --run), on the
default torch engine and default limits. Three kinds of process, all on 127.0.0.1 only:

* the server (``serve()``, the function behind ``transferkit serve``);
* an attacker holding --half-open connections (1,000) that each send a request line and then
  one header line every --interval seconds (8), never finishing the head, and reconnect at
  once when the server drops them: the slowloris of issue 16;
* --clients (32) normal keep-alive clients, one text per request, as in serve.py.

Throughput: normal clients alone, then with the attacker (order alternating per round), each
for --seconds after --warmup; medians over --rounds. Pass: the loaded throughput is >= 90%
of the unloaded one, and no normal request fails. Short phases and many rounds: the cores are
shared, and other work on them moves the throughput more than the attack does; so requests per
CPU-second of the server (what the attack costs the server itself) are reported as well.

SIGTERM under load: a fresh server with a --shutdown-timeout of 5 s, the attacker, and the
clients sending heavy requests (16 long texts each: more queued work than the timeout
allows); SIGTERM after --sigterm-after seconds. The clients record every answer; the server's
access log records every answer it sent. Pass: no answer is a 5xx other than a 503 that says
why, every answer the server sent arrived, and the server exits 0. A client whose connection
is closed before its request was read (the listener has closed, or an idle keep-alive
connection is closed at shutdown, as HTTP allows) gets no answer: that request was never
accepted, and it is counted apart.

    python benchmarks/serve_load.py [--rounds 5] [--seconds 10] [--half-open 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
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
HOST = "127.0.0.1"


def _raise_open_files_limit(n: int) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))


# -- the attacker (its own process) ----------------------------------------------------------
async def _half_open(port: int, interval: float, stats: dict[str, int],
                     stop: asyncio.Event) -> None:
    await asyncio.sleep(random.uniform(0, 1))  # ramp up over a second
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            stats["connect_errors"] += 1
            await asyncio.sleep(0.5)
            continue
        stats["connects"] += 1
        stats["open"] += 1
        stats["max_open"] = max(stats["max_open"], stats["open"])
        writer.write(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        line = 0
        wait = random.uniform(0, interval)  # the lines of all connections spread evenly
        try:
            while not stop.is_set():
                try:
                    data = await asyncio.wait_for(reader.read(4096), wait)
                except asyncio.TimeoutError:
                    line += 1
                    writer.write(b"X-Slow-%d: %d\r\n" % (line, line))
                    stats["lines"] += 1
                    wait = interval
                    continue
                status = data[9:12].decode(errors="replace") if data else "closed"
                stats[f"dropped_{status}"] = stats.get(f"dropped_{status}", 0) + 1
                break
        except OSError:
            stats["dropped_reset"] = stats.get("dropped_reset", 0) + 1
        finally:
            stats["open"] -= 1
            writer.close()


async def _attack(port: int, n: int, interval: float) -> dict[str, int]:
    stats = {"connects": 0, "open": 0, "max_open": 0, "lines": 0, "connect_errors": 0}
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    tasks = [asyncio.create_task(_half_open(port, interval, stats, stop)) for _ in range(n)]
    deadline = time.monotonic() + 30
    while stats["open"] < 0.98 * n and time.monotonic() < deadline and not stop.is_set():
        await asyncio.sleep(0.1)
    print(json.dumps({"ready": stats["open"]}), flush=True)
    await stop.wait()
    stats["open_at_stop"] = stats["open"]
    await asyncio.gather(*tasks, return_exceptions=True)
    return stats


def attack_main(args: argparse.Namespace) -> None:
    _raise_open_files_limit(args.half_open + 256)
    print(json.dumps(asyncio.run(_attack(args.port, args.half_open, args.interval))),
          flush=True)


# -- the normal clients (their own process) --------------------------------------------------
async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """Status, body, and whether the server said it closes the connection."""
    status = int((await reader.readline()).split()[1])
    length, close = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    return status, await reader.readexactly(length), close


def _kind(status: int, payload: bytes) -> str:
    if status == 200:
        return "200" if payload.startswith(b'{"predictions"') else "200 without predictions"
    if status == 503 and b"shutting down" in payload:
        return "503 shutting down"
    if status == 503 and b"queue full" in payload:
        return "503 queue full"
    return str(status)


async def _client(port: int, bodies: list[bytes], offset: int, warm_until: float,
                  deadline: float, out: dict[str, Any], until_refused: bool) -> None:
    reader = writer = None
    i = offset
    while time.perf_counter() < deadline:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection(HOST, port)
            except OSError:
                out["kinds"]["refused"] = out["kinds"].get("refused", 0) + 1
                if until_refused:
                    return  # the listener is closed: the server is going
                await asyncio.sleep(0.1)
                continue
        body = bodies[i % len(bodies)]
        i += 1
        start = time.perf_counter()
        try:
            writer.write(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                         b"application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            status, payload, close = await _read_response(reader)
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
            out["kinds"]["no answer"] = out["kinds"].get("no answer", 0) + 1
            writer.close()
            writer = None
            continue
        end = time.perf_counter()
        if close:  # as HTTP clients do: the next request goes on a new connection
            writer.close()
            writer = None
        kind = _kind(status, payload)
        out["kinds"][kind] = out["kinds"].get(kind, 0) + 1
        if kind == "200" and start >= warm_until and end <= deadline:
            out["latencies"].append(end - start)
    if writer is not None:
        writer.close()


def clients_main(args: argparse.Namespace) -> None:
    import numpy as np

    bodies = [json.dumps(b).encode() for b in json.loads(Path(args.bodies_file).read_text())]

    async def run() -> dict[str, Any]:
        out: dict[str, Any] = {"latencies": [], "kinds": {}}
        now = time.perf_counter()
        warm_until, deadline = now + args.warmup, now + args.warmup + args.seconds
        await asyncio.gather(*[_client(args.port, bodies, k * 997, warm_until, deadline, out,
                                       args.until_refused) for k in range(args.clients)])
        return out

    out = asyncio.run(run())
    lat = np.asarray(out["latencies"]) * 1000
    failed = sum(n for k, n in out["kinds"].items() if k != "200")
    print(json.dumps({
        "requests": int(lat.size), "throughput": lat.size / args.seconds,
        "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p99_ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "failed": failed, "kinds": out["kinds"]}))


# -- the server (its own process) ------------------------------------------------------------
def server_main(args: argparse.Namespace) -> None:
    from transferkit.reuse.serve import serve
    from transferkit.reuse.serve_http import ConnectionLimits

    serve(args.run, port=args.port, access_log=args.access_log,
          connections=ConnectionLimits(shutdown_timeout_s=args.shutdown_timeout))


# -- the driver ------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _start_server(run: Path, log: Path, shutdown_timeout: float, access_log: bool
                  ) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    cmd = [sys.executable, __file__, "server", "--run", str(run), "--port", str(port),
           "--shutdown-timeout", str(shutdown_timeout)] + (["--access-log"] if access_log else [])
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/health", timeout=5) as r:
                if json.loads(r.read())["status"] == "ok":
                    return proc, port
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("server did not start")


def _stop(proc: subprocess.Popen[Any], timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def _start_attacker(port: int, args: argparse.Namespace) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, __file__, "attack", "--port", str(port),
                             "--half-open", str(args.half_open), "--interval",
                             str(args.interval)], stdout=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline() or '{"ready": 0}')["ready"]
    print(f"  attacker: {ready} half-open connections open", flush=True)
    return proc


def _stop_attacker(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    lines = out.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def _clients(port: int, bodies_file: Path, args: argparse.Namespace, *, seconds: float,
             warmup: float, until_refused: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "clients", "--port", str(port), "--bodies-file",
         str(bodies_file), "--clients", str(args.clients), "--warmup", str(warmup),
         "--seconds", str(seconds)] + (["--until-refused"] if until_refused else []),
        stdout=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _throughput_round(server_pid: int, port: int, bodies: Path, args: argparse.Namespace,
                      loaded: bool) -> dict[str, Any]:
    attacker = _start_attacker(port, args) if loaded else None
    try:
        if attacker is not None:
            time.sleep(args.settle)  # the attack in its steady state: lines, drops, reconnects
        cpu = (_cpu_seconds(server_pid), _cpu_seconds(attacker.pid) if attacker else 0.0)
        start = time.perf_counter()
        res = _result(_clients(port, bodies, args, seconds=args.seconds, warmup=args.warmup),
                      args.warmup + args.seconds + 120)
        took = time.perf_counter() - start
        res["server_cores"] = (_cpu_seconds(server_pid) - cpu[0]) / took
        res["per_cpu_s"] = res["requests"] / (res["server_cores"] * args.seconds)
        res["attacker_cores"] = (_cpu_seconds(attacker.pid) - cpu[1]) / took if attacker else 0.0
    finally:
        res_attack = _stop_attacker(attacker) if attacker is not None else {}
    res["attack"] = res_attack
    res["loadavg_1min"] = os.getloadavg()[0]  # the cores are shared: how busy they were
    return res


def _sigterm_round(run: Path, heavy: Path, args: argparse.Namespace, tmp: Path, r: int
                   ) -> dict[str, Any]:
    log = tmp / f"sigterm-server-{r}.log"
    server, port = _start_server(run, log, args.shutdown_timeout, access_log=True)
    attacker = _start_attacker(port, args)
    try:
        clients = _clients(port, heavy, args, seconds=args.sigterm_after + 120, warmup=0,
                           until_refused=True)
        time.sleep(args.sigterm_after)
        server.send_signal(signal.SIGTERM)
        code = server.wait(args.shutdown_timeout + 120)
        res = _result(clients, 180)
    finally:
        if server.poll() is None:
            server.kill()
        attack = _stop_attacker(attacker)
    text = log.read_text(errors="replace")
    sent = [int(s) for s in re.findall(r'"POST /predict HTTP/1\.1" (\d{3})', text)]
    received = sum(n for k, n in res["kinds"].items() if k not in ("no answer", "refused"))
    res.update(exit_code=code, attack=attack, server_answers=len(sent),
               server_5xx=sum(s >= 500 for s in sent),
               server_500=sum(s == 500 for s in sent), received=received,
               asgi_exceptions=text.count("Exception in ASGI application"))
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command")
    attack = sub.add_parser("attack")
    clients = sub.add_parser("clients")
    server = sub.add_parser("server")
    for p in (attack, clients, server):
        p.add_argument("--port", type=int, required=True)
    clients.add_argument("--bodies-file", required=True)
    clients.add_argument("--until-refused", action="store_true")
    server.add_argument("--run", required=True)
    server.add_argument("--access-log", action="store_true")
    for p in (ap, attack):
        p.add_argument("--half-open", type=int, default=1000)
        p.add_argument("--interval", type=float, default=8.0,
                       help="seconds between the header lines of a half-open connection")
    for p in (ap, clients):
        p.add_argument("--clients", type=int, default=32)
        p.add_argument("--warmup", type=float, default=3.0)
        p.add_argument("--seconds", type=float, default=10.0)
    for p in (ap, server):
        p.add_argument("--shutdown-timeout", type=float, default=5.0,
                       help="graceful shutdown of the SIGTERM scenario's server")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--settle", type=float, default=12.0,
                    help="seconds of attack before measuring (past the 10 s header timeout)")
    ap.add_argument("--sigterm-after", type=float, default=8.0)
    ap.add_argument("--sigterm-rounds", type=int, default=3)
    ap.add_argument("--train-texts", type=int, default=1000)
    ap.add_argument("--run", help="serve this run folder instead of fitting one")
    args = ap.parse_args()
    if args.command == "attack":
        return attack_main(args)
    if args.command == "clients":
        return clients_main(args)
    if args.command == "server":
        return server_main(args)

    import h11
    import torch
    import uvicorn
    from common import entry, median, print_table, served_model, sms_texts, write_results

    import transferkit

    _raise_open_files_limit(args.half_open + 256)
    with tempfile.TemporaryDirectory(prefix="tk-bench-serve-load-") as tmp:
        tmp_path = Path(tmp)
        run = served_model(tmp_path, args.run, args.train_texts, onnx=False)
        texts = sms_texts()
        light = tmp_path / "light.json"
        light.write_text(json.dumps([{"texts": [t]} for t in texts]))
        long_texts = [" ".join(texts[i:i + 8])[:1000] for i in range(0, 16 * 8 * 8, 8)]
        heavy = tmp_path / "heavy.json"
        heavy.write_text(json.dumps([{"texts": long_texts[i:i + 16]}
                                     for i in range(0, len(long_texts), 16)]))

        results: dict[str, list[dict[str, Any]]] = {"unloaded": [], "loaded": []}
        proc, port = _start_server(run, tmp_path / "server.log", 30.0, access_log=False)
        try:
            for r in range(args.rounds):
                order = ["unloaded", "loaded"] if r % 2 == 0 else ["loaded", "unloaded"]
                for phase in order:
                    res = _throughput_round(proc.pid, port, light, args, phase == "loaded")
                    results[phase].append(res)
                    print(f"round {r + 1} {phase}: {res['throughput']:.0f} req/s, p50 "
                          f"{res['p50_ms']:.0f} ms, p99 {res['p99_ms']:.0f} ms, answers "
                          f"{res['kinds']}, cores used: server {res['server_cores']:.2f}, "
                          f"attacker {res['attacker_cores']:.2f}; attack {res['attack']}; "
                          f"load {res['loadavg_1min']:.1f}", flush=True)
        finally:
            throughput_exit = _stop(proc)

        sigterm = []
        for r in range(args.sigterm_rounds):
            res = _sigterm_round(run, heavy, args, tmp_path, r)
            sigterm.append(res)
            print(f"SIGTERM round {r + 1}: client answers {res['kinds']}; server sent "
                  f"{res['server_answers']} ({res['server_5xx']} 5xx, {res['server_500']} "
                  f"500), {res['asgi_exceptions']} ASGI exceptions, exit {res['exit_code']}",
                  flush=True)

    def med(phase: str, key: str) -> float:
        return median([x[key] for x in results[phase]])

    versions = {"transferkit": transferkit.__version__, "torch": torch.__version__,
                "uvicorn": uvicorn.__version__, "h11": h11.__version__}
    failed = {p: int(sum(x["failed"] for x in results[p])) for p in results}
    setup = {"clients": args.clients, "half_open": args.half_open,
             "header_line_every_s": args.interval, "seconds": args.seconds,
             "warmup": args.warmup, "settle": args.settle, "texts_per_request": 1,
             "engine": "torch", "ours_is": "normal clients under the attack",
             "peer_is": "the same clients, no attack",
             "failed_requests": failed, "throughput_server_exit": throughput_exit,
             "attack": [x["attack"] for x in results["loaded"]],
             "per_round": {p: [{k: x[k] for k in ("throughput", "p50_ms", "p99_ms", "kinds",
                                                  "server_cores", "attacker_cores",
                                                  "per_cpu_s", "loadavg_1min")}
                               for x in results[p]] for p in results}}
    entries = [
        entry(f"{args.clients} clients under {args.half_open:,} half-open connections: "
              "throughput", med("loaded", "throughput"), med("unloaded", "throughput"),
              "req/s", args.rounds, True, versions, **setup),
        # throughput per core the server got: what the attack costs the server itself, less
        # moved by other work on the shared cores than throughput is
        entry(f"{args.clients} clients under {args.half_open:,} half-open connections: "
              "requests per server CPU-second", med("loaded", "per_cpu_s"),
              med("unloaded", "per_cpu_s"), "req/CPU-s", args.rounds, True, versions,
              **setup),
        entry(f"{args.clients} clients under {args.half_open:,} half-open connections: p99 "
              "latency", med("loaded", "p99_ms"), med("unloaded", "p99_ms"), "ms",
              args.rounds, False, versions, **setup),
    ]
    kinds: dict[str, int] = {}
    for x in sigterm:
        for k, n in x["kinds"].items():
            kinds[k] = kinds.get(k, 0) + n
    answered = sum(n for k, n in kinds.items() if k not in ("no answer", "refused"))
    good = kinds.get("200", 0) + kinds.get("503 shutting down", 0) + kinds.get(
        "503 queue full", 0)
    bad_5xx = sum(n for k, n in kinds.items() if k[:1] == "5" and not k.startswith("503 "))
    entries.append(entry(
        "SIGTERM under load: answers that are a result or a 503 saying why",
        good / answered if answered else float("nan"), 1.0, "fraction", args.sigterm_rounds, True,
        versions, ours_is=f"{args.clients} clients of 16 long texts per request, "
                          f"{args.half_open:,} half-open connections, SIGTERM after "
                          f"{args.sigterm_after:g} s, shutdown timeout {args.shutdown_timeout:g} s",
        peer_is="the requirement: every answer a result or a 503 with a reason",
        client_answers=kinds, answered=answered, other_5xx=bad_5xx,
        server_sent=[x["server_answers"] for x in sigterm],
        client_received=[x["received"] for x in sigterm],
        server_500=[x["server_500"] for x in sigterm],
        asgi_exceptions=[x["asgi_exceptions"] for x in sigterm],
        exit_codes=[x["exit_code"] for x in sigterm]))
    print_table(entries)

    keep = entries[0]["ratio"]
    checks = {
        f"loaded throughput >= 90% of unloaded ({keep:.1%})": keep >= 0.9,
        f"no failed normal request ({failed})": failed == {"unloaded": 0, "loaded": 0},
        f"SIGTERM: no 5xx but a 503 with a reason ({bad_5xx})": bad_5xx == 0,
        "SIGTERM: every answer the server sent arrived": all(
            x["server_answers"] == x["received"] for x in sigterm),
        "SIGTERM: server exit code 0": all(x["exit_code"] == 0 for x in sigterm),
    }
    for what, ok in checks.items():
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
    print(f"results: {write_results('serve_load', entries)}")


if __name__ == "__main__":
    main()
