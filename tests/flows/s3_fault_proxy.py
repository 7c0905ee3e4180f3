"""A fault-injecting HTTP proxy in front of moto's S3 server, for the chaos suite.

The pipeline reaches S3 through AWS_ENDPOINT_URL; pointed at this proxy, every request it makes
(from the test process or from a worker process) passes here on its way to the real server.
A seeded share of requests is answered with what S3 answers under load instead of being
forwarded: 503 SlowDown, 500 InternalError, or a connection reset without a response. An outage
fails every request for a while, long enough for the SDK's retries to give up, so that the
pipeline itself meets the error. A faulted request never reaches the server: the object store
changes only through requests that were forwarded.

It also keeps the books the suite checks: every forwarded PUT by key, and every PUT to a
variant (its PNG or its sidecar) after that variant was complete (its sidecar written), which
must never happen.
"""

from __future__ import annotations

import http.client
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

FAULTS = ("503 SlowDown", "500 InternalError", "connection reset")
_ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
    "<RequestId>chaos</RequestId></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}
# Prefixes of a run's bookkeeping under the output, and the contact sheet: not variants.
_NOT_VARIANTS = ("_runs/", "_cache/", "_poses/")


@dataclass
class Books:
    """What passed through the proxy, for the suite's checks and totals."""

    requests: int = 0
    faults: Counter = field(default_factory=Counter)  # injected, by kind
    puts: Counter = field(default_factory=Counter)  # forwarded PUTs that the server accepted, by key
    complete: set = field(default_factory=set)  # variants (bucket/output/garment/variant) whose sidecar was written
    rewrites: list = field(default_factory=list)  # PUTs to a variant that was complete at the time


class FaultProxy:
    """`FaultProxy(upstream)`: a proxy on 127.0.0.1 (its `url`) forwarding to `upstream`.
    Injects nothing until `inject(...)`; `calm()` stops injecting; `stop()` shuts it down."""

    def __init__(self, upstream: str, seed: int = 0):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname, parts.port)
        self.books = Books()
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._rate = 0.0
        self._outage_after: int | None = None
        self._outage_seconds = 0.0
        self._outage_until = 0.0
        self._variant_outputs: tuple[str, ...] = ()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="s3-fault-proxy", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def watch_variants_under(self, *outputs: str) -> None:
        """Count variant writes under these outputs (`bucket/prefix`)."""
        self._variant_outputs = tuple(o.rstrip("/") + "/" for o in outputs)

    def inject(self, rate: float, outage_after: int | None = None, outage_seconds: float = 0.0, seed: int = 0) -> None:
        """Fault a `rate` share of requests; and, if `outage_after` is given, every request for
        `outage_seconds` once that many more requests have passed. Which requests, and how,
        is drawn from `seed` (in the order the requests arrive)."""
        with self._lock:
            self._random.seed(seed)
            self._rate = rate
            self._outage_after = None if outage_after is None else self.books.requests + outage_after
            self._outage_seconds = outage_seconds
            self._outage_until = 0.0

    def calm(self) -> None:
        with self._lock:
            self._rate, self._outage_after, self._outage_until = 0.0, None, 0.0

    @property
    def outages(self) -> int:
        return self.books.faults["outage"]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    # ----- decisions, under the lock ----------------------------------------------------------

    def _decide(self) -> str | None:
        with self._lock:
            self.books.requests += 1
            now = time.monotonic()
            if self._outage_after is not None and self.books.requests >= self._outage_after:
                self._outage_after = None
                self._outage_until = now + self._outage_seconds
                self.books.faults["outage"] += 1
            if now < self._outage_until or self._random.random() < self._rate:
                fault = self._random.choice(FAULTS)
                self.books.faults[fault] += 1
                return fault
            return None

    def _variant(self, key: str) -> tuple[str, str] | None:
        """(variant, 'png' or 'json') for a variant's image or sidecar key, else None."""
        for output in self._variant_outputs:
            if key.startswith(output):
                rest = key[len(output) :]
                if rest.startswith(_NOT_VARIANTS) or rest.count("/") != 1:
                    return None
                stem, _, extension = rest.rpartition(".")
                if extension in ("png", "json"):
                    return output + stem, extension
        return None

    def _record_put(self, key: str, status: int) -> None:
        variant = self._variant(key)
        with self._lock:
            if variant is not None and variant[0] in self.books.complete:
                self.books.rewrites.append(key)  # counted whether or not the server accepted it
            if 200 <= status < 300:
                self.books.puts[key] += 1
                if variant is not None and variant[1] == "json":
                    self.books.complete.add(variant[0])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as boto3's connection pool expects
    disable_nagle_algorithm = True  # headers and body go out in two writes: no delayed-ACK stall
    owner: FaultProxy

    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass

    def do_GET(self):
        self._handle()

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def _handle(self) -> None:
        body = self._read_body()
        fault = self.owner._decide()
        if fault == "connection reset":
            self._reset()
            return
        if fault is not None:
            status, code = fault.split(" ", 1)
            message = "Please reduce your request rate." if code == "SlowDown" else "We encountered an internal error."
            self._answer(int(status), {"Content-Type": "application/xml"}, _ERROR_XML.format(code=code, message=message).encode())
            return
        try:
            status, headers, payload = self._forward(body)
        except OSError:
            self._reset()
            return
        if self.command == "PUT":
            key = unquote(urlsplit(self.path).path.lstrip("/"))
            self.owner._record_put(key, status)
        self._answer(status, headers, payload)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send the request on to the server on this client connection's own upstream connection
        (kept open while the client keeps its own)."""
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        if getattr(self, "_upstream", None) is None:
            self._upstream = http.client.HTTPConnection(*self.owner.upstream, timeout=60)
        try:
            self._upstream.request(self.command, self.path, body=body, headers=headers)
            response = self._upstream.getresponse()
            payload = response.read()
        except (OSError, http.client.HTTPException):
            self._upstream.close()
            self._upstream = None
            raise OSError("upstream connection failed") from None
        return response.status, [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP], payload

    def _answer(self, status: int, headers, payload: bytes) -> None:
        self.send_response(status)
        items = headers.items() if isinstance(headers, dict) else headers
        for name, value in items:
            if name.lower() != "content-length":
                self.send_header(name, value)
        if self.command == "HEAD":
            length = dict((k.lower(), v) for k, v in items).get("content-length", "0")
            self.send_header("Content-Length", length)
            self.end_headers()
            return
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _reset(self) -> None:
        """Drop the connection with a TCP reset and no response, as a failing load balancer does."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
        except OSError:
            pass

    def finish(self) -> None:
        if getattr(self, "_upstream", None) is not None:
            self._upstream.close()
        try:
            super().finish()
        except (OSError, ValueError):
            pass


def compress_sdk_time(setattr_, factor: float = 20.0) -> None:
    """Make botocore's retry backoff `factor` times shorter in this process (with `setattr_`:
    pytest's monkeypatch.setattr, or setattr in a worker), and let its adaptive mode's
    client-side rate limiter measure but not block: the SDK still retries every fault it would,
    with the same attempts and conditions, but a trial's hundreds of faults cost seconds, not
    minutes. (After a SlowDown in a client's first second the limiter's measured rate is near
    zero, and it holds the client at 0.5 requests a second while it recovers.)"""
    from botocore.retries.adaptive import ClientRateLimiter
    from botocore.retries.standard import ExponentialBackoff

    delay_amount = ExponentialBackoff.delay_amount

    def shorter_delay(self, context):
        return delay_amount(self, context) / factor

    setattr_(ExponentialBackoff, "delay_amount", shorter_delay)
    setattr_(ClientRateLimiter, "on_sending_request", lambda self, request, **kwargs: None)
