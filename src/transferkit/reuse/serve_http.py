"""The connection layer under ``transferkit serve``: read deadlines, a connection cap, and a
shutdown that answers every accepted request.

Why it exists: uvicorn has no deadline for reading a request. Its ``timeout_keep_alive`` only
runs between requests and is cancelled by any byte, and its ``limit_concurrency`` counts open
connections, so 1,030 connections that each sent one header line every 8 s made every real
request answer 503. Here (a subclass of uvicorn's h11 protocol, the one installed):

* a request head must arrive completely within ``header_timeout_s`` of the connection opening
  (or of the previous response), however it trickles in; a body may not pause longer than
  ``body_timeout_s``. Late ones get a 408 and are closed.
* never more than ``max_connections`` are open, and from half that many on, each new
  connection closes the one that has waited longest on its client (for a request head or for
  body bytes), if that one has waited at least ``EVICT_AFTER_S``: the slowest senders go
  first, never a request being answered, nor a connection too new to have sent its request.
  Half-open connections therefore cannot lock out a client that sends its request at once,
  even when they outnumber the cap and reconnect as soon as they are dropped.
* on SIGTERM accepted requests finish; those still unanswered when ``shutdown_timeout_s`` runs
  out get a 503 that says why (``ShutdownGuard``) instead of uvicorn's bare 500.
"""

from __future__ import annotations

import array
import asyncio
import http
import json
import logging
import signal
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.flow_control import CLOSE_HEADER
from uvicorn.protocols.http.h11_impl import H11Protocol

try:  # to see whether a connection has unread bytes (Linux, macOS)
    import fcntl
    import termios
except ImportError:  # Windows
    fcntl = termios = None  # type: ignore[assignment]

from ..errors import ConfigError
from .serve_limits import TrackedSend, send_error

log = logging.getLogger("transferkit.serve")

SHUTTING_DOWN = ("The server is shutting down and could not finish this request in time. "
                 "Retry it, on another instance if there is one.")
TIMED_OUT = "transferkit.body_timeout"  # scope key: the server, not the client, cut the body
EVICT_AFTER_S = 0.25  # a client connects and sends its request head well within this


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a client may take to send its request, how many connections are open at once,
    and how long accepted requests get to finish after SIGTERM."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 20.0  # longest pause between two pieces of a body
    max_connections: int = 4096  # half of it before the slowest are pushed out
    shutdown_timeout_s: float = 30.0


class _Guard:
    """Shared by the connections of one server: which are open, and which wait on their
    client, longest-waiting first (a dict keeps insertion order; re-entering moves to the end).
    """

    def __init__(self, limits: ConnectionLimits) -> None:
        self.limits = limits
        self.open: set[GuardedH11Protocol] = set()
        self.waiting: dict[GuardedH11Protocol, float] = {}  # -> when it began waiting
        self.dropped: Counter[str] = Counter()
        self.last_report = float("-inf")

    def evict_longest_waiting(self, now: float) -> bool:
        """Close the connection that has waited longest on its client, if long enough,
        passing over one whose bytes are already here, unread: a burst of new connections is
        accepted before the bytes of the earlier ones are read, and those may be a request."""
        victim = None
        for i, (candidate, since) in enumerate(self.waiting.items()):
            if now - since < EVICT_AFTER_S:
                break  # the rest waited less
            victim = victim or candidate
            if i == 16 or not _unread_bytes(candidate.transport):
                victim = candidate
                break
        if victim is None:
            return False
        victim.drop("evicted", 503, "The server is at its connection limit and this connection "
                                    "was the slowest to send its request. Retry.")
        return True

    def note(self, reason: str) -> None:
        """One warning per 30 s at most: a slowloris attack closes thousands of connections."""
        self.dropped[reason] += 1
        now = time.monotonic()
        if now - self.last_report >= 30:
            log.warning("closed slow or excess connections: %s (header timeout %g s, body "
                        "timeout %g s, at most %d connections)",
                        ", ".join(f"{n} {r}" for r, n in sorted(self.dropped.items())),
                        self.limits.header_timeout_s, self.limits.body_timeout_s,
                        self.limits.max_connections)
            self.dropped.clear()
            self.last_report = now


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus read deadlines and the connection cap (see the module)."""

    guard: _Guard  # set on the per-server subclass made by ``guarded_protocol``

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.phase = ""  # "head": waiting for a request head, "body": for body bytes, "busy"
        self.deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        guard, cap = self.guard, self.guard.limits.max_connections
        if len(guard.open) >= cap // 2:
            evicted = guard.evict_longest_waiting(self.loop.time())
            if not evicted and len(guard.open) >= cap:
                self._answer_and_close(503, f"The server has {cap} connections open, its "
                                            "limit. Retry shortly.")
                guard.note("refused")
                return
        guard.open.add(self)
        self._update_phase()

    def connection_lost(self, exc: Exception | None) -> None:
        self._forget()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._update_phase(progress=True)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._update_phase()

    def shutdown(self) -> None:
        """uvicorn closes a busy connection after its answer; say so in the answer
        (``Connection: close``, which uvicorn adds when the request asked for it), so that the
        client does not send its next request into a closing connection."""
        if self.cycle is not None and not self.cycle.response_started:
            self.scope["headers"].append(CLOSE_HEADER)  # type: ignore[attr-defined]
        super().shutdown()

    def _update_phase(self, progress: bool = False) -> None:
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            phase = "head"
        elif cycle.more_body and not cycle.disconnected:
            phase = "body"
        else:
            phase = "busy"
        entering = phase != self.phase
        if not entering and not (phase == "body" and progress):
            return  # a head's deadline is for the whole head: bytes do not extend it
        self.phase = phase
        self._cancel_deadline()
        if entering:
            self.guard.waiting.pop(self, None)
            if phase != "busy":
                self.guard.waiting[self] = self.loop.time()
        if phase != "busy":
            limits = self.guard.limits
            timeout = limits.header_timeout_s if phase == "head" else limits.body_timeout_s
            self.deadline = self.loop.call_later(timeout, self._deadline_passed)

    def _deadline_passed(self) -> None:
        self.deadline = None
        if self.transport.is_closing():
            return
        limits = self.guard.limits
        if self.phase == "body" and self.flow.read_paused:  # the app is behind, not the client
            self.deadline = self.loop.call_later(limits.body_timeout_s, self._deadline_passed)
        elif self.phase == "head":
            self.drop("header timeout", 408, f"The request head did not arrive within "
                                             f"{limits.header_timeout_s:g} s.")
        elif self.phase == "body":
            self.drop("body timeout", 408, f"The request body paused for more than "
                                           f"{limits.body_timeout_s:g} s.")

    def drop(self, reason: str, status: int, message: str) -> None:
        """Close a connection that waits on its client, answering if it sent something."""
        self._forget()
        app_logs_it = False
        if self.phase == "body":
            # the app, reading the body, sees a disconnect and logs it (naming the reason)
            self.scope[TIMED_OUT] = reason  # type: ignore[literal-required]
            app_logs_it = not self.cycle.response_started
            if self.cycle.response_started:
                status = 0
        elif not self.conn.trailing_data[0]:
            status = 0  # nothing of a request yet (a fresh or idle keep-alive connection)
        if status:
            self._answer_and_close(status, message)
        else:
            self.transport.close()
        if not app_logs_it:
            self.guard.note(reason)

    def _answer_and_close(self, status: int, message: str) -> None:
        """Written raw, past h11: it may not have a request to answer, and we close anyway."""
        body = json.dumps({"detail": message}).encode()
        head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
                f"content-type: application/json\r\ncontent-length: {len(body)}\r\n"
                + ("retry-after: 1\r\n" if status == 503 else "") + "connection: close\r\n\r\n")
        self.transport.write(head.encode() + body)
        self.transport.close()

    def _forget(self) -> None:
        self._cancel_deadline()
        self.guard.open.discard(self)
        self.guard.waiting.pop(self, None)

    def _cancel_deadline(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None


def _unread_bytes(transport: asyncio.Transport) -> int:
    sock = transport.get_extra_info("socket")
    if sock is None or fcntl is None:
        return 0
    try:
        buf = array.array("i", [0])
        fcntl.ioctl(sock.fileno(), termios.FIONREAD, buf)
        return buf[0]
    except OSError:
        return 0


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """A protocol class whose connections share one guard (one per server)."""
    if (limits.max_connections < 2 or limits.header_timeout_s <= 0
            or limits.body_timeout_s <= 0 or limits.shutdown_timeout_s < 0):
        raise ConfigError("--max-connections must be at least 2, --header-timeout and "
                          "--body-timeout above 0, and --shutdown-timeout at least 0.")
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"guard": _Guard(limits)})


class ShutdownGuard:
    """ASGI middleware: a request still unanswered when the graceful shutdown runs out is
    cancelled by uvicorn, which would answer 500; answer 503 with the reason instead."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        tracked = TrackedSend(send)
        try:
            await self.app(scope, receive, tracked)
        except asyncio.CancelledError:
            if tracked.started:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()  # the cancel is handled: let the answer below be written
            await send_error(send, 503, SHUTTING_DOWN, [(b"retry-after", b"1")])


def build_server(app: Any, *, host: str, port: int, limits: ConnectionLimits,
                 log_level: str = "info", access_log: bool = False) -> Any:
    """A ``uvicorn.Server`` for ``app`` with the guarded protocol; it also sets up logging,
    and our logger then writes through uvicorn's handler, in its format."""
    import uvicorn

    _raise_open_files_limit(limits.max_connections)
    # limit_concurrency stays off: it counts idle connections (see the module docstring)
    config = uvicorn.Config(app, host=host, port=port, access_log=access_log,
                            log_level=log_level, http=guarded_protocol(limits), ws="none",
                            timeout_graceful_shutdown=limits.shutdown_timeout_s,  # type: ignore
                            limit_concurrency=None)
    if not log.handlers:
        for handler in logging.getLogger("uvicorn").handlers:
            log.addHandler(handler)
        log.setLevel(logging.getLogger("uvicorn.error").level)
        log.propagate = False
    return uvicorn.Server(config)


def run_server(server: Any) -> None:
    """Serve until SIGTERM / Ctrl-C, then let accepted requests finish (or 503 them after
    the shutdown timeout) and exit with status 0."""
    # uvicorn handles SIGTERM/SIGINT itself (stop accepting, finish in-flight requests), then
    # re-raises the signal to the handler that was installed before it; a no-op handler there
    # turns that re-raise into a normal exit with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()


def _raise_open_files_limit(connections: int) -> None:
    """Each connection is a file descriptor; a soft limit of 1,024 (a common default) would
    make accept() fail before the connection cap is reached."""
    try:
        import resource
    except ImportError:  # Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256  # model files, logs, the listening socket, threads
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if new > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    if new < wanted:
        log.warning("the open-files limit (ulimit -n) is %d: fewer than the %d connections "
                    "allowed can be accepted. Raise it, or lower --max-connections.", hard,
                    connections)
