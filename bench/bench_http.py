"""HTTP throughput of ``edgefl-server``, measured beside a bare hypercorn-trio ASGI app in one run.

Run: ``python bench/bench_http.py [--seconds 5] [--connections 32] [--devices 10000]
[--updates 300] [--rounds 3]``.

Every server runs in its own process pinned to CPU 0 (one core, the trio worker as deployed); the
load generator runs here, pinned to CPU 1, and speaks raw HTTP/1.1 keep-alive over loopback so the
client is never the bottleneck. Rounds alternate between the servers and the medians are reported,
since other processes on the machine add noise.

1. ``/task`` polls: ``--devices`` devices are registered (one ``/selection`` range), each poll
   comes from one of them with Android headers and mostly gets ``RETRY`` ("Device not selected"),
   as a waiting phone does. Compared with a bare ASGI app under the same hypercorn config that
   reads the body and returns a ``RETRY`` body of the same size (target: edgefl >= 75 %), with the
   fast path (default) and with every request through quart-trio. Latencies (p50/p99) are measured
   per request; then 1,000 connections each poll every ``--poll-interval`` seconds (phones wait
   ``retry_wait`` between polls) and the p99 latency at that load is reported (target < 50 ms).
2. ``/result`` updates for the 62,006-parameter CIFAR-10 tutorial net: ``--updates`` devices first
   get a task (untimed), then all report at once over ``--connections`` connections; accepted
   updates per second, end to end over HTTP, for Android-form JSON (~1.46 MB) and CBOR typed
   arrays (~250 KB) (targets: 250/s and 1,000/s on one core). Beside it: the standard ``json``
   module plus ``np.array`` per tensor on the same JSON body, the baseline DESIGN.md names
   (edgefl's end-to-end rate should be at least 4x that decode-only rate).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import trio

HERE = Path(__file__).resolve()
RETRY_BODY = orjson.dumps(
    {
        "status": "RETRY",
        "job_id": "3b8d6f2a-9c41-4e7b-a5d2-0f6e1c9b7a35",
        "retry_wait": 5000,
        "message": "Device not selected",
    }
)
# The trainable parameters of the CIFAR-10 tutorial net exported below: 62,006 floats.
SCHEMA: dict[str, tuple[int, ...]] = {
    "conv1.weight": (6, 3, 5, 5),
    "conv1.bias": (6,),
    "conv2.weight": (16, 6, 5, 5),
    "conv2.bias": (16,),
    "fc1.weight": (120, 400),
    "fc1.bias": (120,),
    "fc2.weight": (84, 120),
    "fc2.bias": (84,),
    "fc3.weight": (10, 84),
    "fc3.bias": (10,),
}
_CONTENT_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)

# ------------------------------------------------------------------------------------------------
# The bare ASGI app (the yardstick)


async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the body and answers a fixed RETRY body, as a minimal EDIP /task would."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(RETRY_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": RETRY_BODY})


def serve_bare(port: int) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.keep_alive_timeout = 30
    config.include_server_header = False
    trio.run(serve, bare_app, config)


# ------------------------------------------------------------------------------------------------
# Jobs


def _export_jobs(root: Path, devices: int, updates: int) -> tuple[Path, Path]:
    """The XOR job (for polls) and the 62,006-parameter CIFAR-10 tutorial net (for updates)."""
    import torch
    from torch import nn

    from edgefl import DeviceManagerConfig, DeviceModel, ETFedBuffRecipe, ModelManagerConfig

    class Xor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear1, self.linear2 = nn.Linear(2, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear2(torch.sigmoid(self.linear1(x)))

    class Net(nn.Module):  # the PyTorch CIFAR-10 tutorial network: 62,006 parameters
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 5)
            self.pool = nn.MaxPool2d(2, 2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.fc1 = nn.Linear(16 * 5 * 5, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = x.reshape(-1, 3, 32, 32)
            x = self.pool(torch.relu(self.conv1(x)))
            x = self.pool(torch.relu(self.conv2(x)))
            x = torch.flatten(x, 1)
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    polls = ETFedBuffRecipe(
        job_name="poll_bench",
        device_model=DeviceModel(Xor()),
        input_shape=(1, 2),
        output_shape=(1,),
        model_manager_config=ModelManagerConfig(
            global_lr=1.0, num_updates_for_model=10, max_model_version=1_000_000
        ),
        # A small selection among many registered devices: nearly every poll is parked.
        device_manager_config=DeviceManagerConfig(device_selection_size=10),
    ).export(root / "polls" / "job")
    reports = ETFedBuffRecipe(
        job_name="cifar_bench",
        device_model=DeviceModel(Net()),
        input_shape=(4, 3 * 32 * 32),
        output_shape=(4,),
        # Every task is handed out before the first report: no staleness cut-off, so all count.
        model_manager_config=ModelManagerConfig(
            global_lr=1.0,
            num_updates_for_model=10,
            max_model_version=1_000_000,
            max_model_history=None,
        ),
        device_manager_config=DeviceManagerConfig(
            device_selection_size=max(10, 4 * updates), min_devices_to_start=1
        ),
        method="cnn",
    ).export(root / "reports" / "job")
    return polls.parent, reports.parent


# ------------------------------------------------------------------------------------------------
# Servers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A server in a subprocess pinned to CPU 0."""

    def __init__(self, kind: str, jobs: Path | None = None, fast_path: bool = True) -> None:
        self.port = _free_port()
        if kind == "bare":
            cmd = [sys.executable, str(HERE), "--serve-bare", str(self.port)]
        else:
            assert jobs is not None
            self.state = Path(tempfile.mkdtemp(prefix="edgefl-bench-state-"))
            cmd = [
                sys.executable,
                "-m",
                "edgefl",
                "serve",
                "--jobs",
                str(jobs),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--state-dir",
                str(self.state),
                "--seed",
                "1",
                "--fast-path" if fast_path else "--no-fast-path",
            ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
            os.sched_setaffinity(self.proc.pid, {0})
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{kind} server did not start") from None
                time.sleep(0.1)

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if hasattr(self, "state"):
            shutil.rmtree(self.state, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# A raw HTTP/1.1 keep-alive client


def _request(
    method: str, target: str, headers: dict[str, str], body: bytes = b"", *, port: int
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class Connection:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def roundtrip(self, request: bytes) -> tuple[int, bytes]:
        await self.stream.send_all(request)
        while b"\r\n\r\n" not in self.buffer:
            chunk = await self.stream.receive_some(1 << 20)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self.buffer += chunk
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        match = _CONTENT_LENGTH.search(head)
        if match is None:
            raise ConnectionError(f"response without content-length: {head[:200]!r}")
        length = int(match.group(1))
        parts = [rest]
        have = len(rest)
        while have < length:
            chunk = await self.stream.receive_some(1 << 20)
            if not chunk:
                raise ConnectionError("server closed the connection")
            parts.append(chunk)
            have += len(chunk)
        data = b"".join(parts)
        self.buffer = data[length:]
        return int(head[9:12]), data[:length]


async def _connect(port: int, n: int) -> list[Connection]:
    return [Connection(await trio.open_tcp_stream("127.0.0.1", port)) for _ in range(n)]


async def load(
    port: int,
    requests: list[bytes],
    *,
    connections: int,
    seconds: float,
    rate: float | None = None,
) -> tuple[float, list[float]]:
    """Send ``requests`` round-robin for ``seconds``, as fast as possible or, with ``rate``, at
    that many requests per second in total (each connection waits its turn, like a polling phone);
    returns (requests/s, latencies)."""
    conns = await _connect(port, connections)
    interval = connections / rate if rate else 0.0
    latencies: list[float] = []
    count = 0
    for conn in conns[:4]:  # warm up
        await conn.roundtrip(requests[0])

    async def worker(conn: Connection, start: int) -> None:
        nonlocal count
        i = start
        if interval:
            await trio.sleep(interval * start / connections)  # spread the first requests
        while True:
            if interval:
                next_at = trio.current_time() + interval
            t0 = time.perf_counter()
            status, _ = await conn.roundtrip(requests[i % len(requests)])
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                raise RuntimeError(f"HTTP {status}")
            count += 1
            i += connections
            if interval:
                await trio.sleep_until(next_at)

    started = time.perf_counter()
    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for k, conn in enumerate(conns):
                nursery.start_soon(worker, conn, k)
    elapsed = time.perf_counter() - started
    for conn in conns:
        await conn.stream.aclose()
    return count / elapsed, latencies


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) * 1e3 if values else float("nan")


# ------------------------------------------------------------------------------------------------
# The benchmarks


def _android(device_id: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json; charset=utf-8",
        "X-Flare-Device-ID": device_id,
        "X-Flare-Device-Info": "app_name=ExecuTorch Demo&app_version=1.0&platform=android",
        "X-Flare-User-Info": "user_id=bench",
    }


async def _job_id(port: int, name: str) -> str:
    (conn,) = await _connect(port, 1)
    body = orjson.dumps({"job_name": name})
    _, reply = await conn.roundtrip(_request("POST", "/job", _android("joiner"), body, port=port))
    await conn.stream.aclose()
    return str(orjson.loads(reply)["job_id"])


async def poll_requests(port: int, devices: int, *, register: bool) -> list[bytes]:
    if not register:
        return [
            _request("POST", "/task?job_id=x", _android(f"bench#{i}"), b"{}", port=port)
            for i in range(devices)
        ]
    job_id = await _job_id(port, "poll_bench")
    (conn,) = await _connect(port, 1)
    headers = {"X-Flare-Device-ID": f"bench?{devices}", "Content-Type": "application/json"}
    status, _ = await conn.roundtrip(
        _request("POST", f"/selection?job_id={job_id}", headers, b"{}", port=port)
    )
    assert status == 200
    await conn.stream.aclose()
    return [
        _request("POST", f"/task?job_id={job_id}", _android(f"bench#{i}"), b"{}", port=port)
        for i in range(devices)
    ]


def _update_bodies() -> tuple[dict[str, np.ndarray], bytes, bytes]:
    import protocol

    rng = np.random.default_rng(0)
    delta = {k: (rng.standard_normal(s) * 1e-3).astype(np.float32) for k, s in SCHEMA.items()}
    bodies = []
    for form in ("android", "cbor"):
        report = protocol.ResultReport(
            job_id="J",
            task_id="T",
            task_name="train",
            result=protocol.RawResult(
                kind="number", data=protocol.encode_tensor_map(delta, form), meta={}
            ),
        )
        bodies.append(protocol.encode_request(report, cbor=form == "cbor"))
    return delta, bodies[0], bodies[1]


async def report_round(
    server: Server, body: bytes, content_type: str, n: int, connections: int, prefix: str
) -> tuple[float, float]:
    """``n`` devices get a task (untimed), then report ``body``; returns (accepted/s, cpu s)."""
    port = server.port
    job_id = await _job_id(port, "cifar_bench")
    conns = await _connect(port, connections)
    tasks: list[tuple[str, str]] = []

    async def fetch(conn: Connection, start: int) -> None:
        for i in range(start, n, connections):
            device = f"{prefix}-{i}"
            _, reply = await conn.roundtrip(
                _request("POST", f"/task?job_id={job_id}", _android(device), b"{}", port=port)
            )
            task = orjson.loads(reply)
            if task["status"] != "OK":
                raise RuntimeError(f"{device} got no task: {task}")
            tasks.append((device, task["task_id"]))

    async with trio.open_nursery() as nursery:
        for k, conn in enumerate(conns):
            nursery.start_soon(fetch, conn, k)
    requests = [
        _request(
            "POST",
            f"/result?job_id={job_id}&task_id={task_id}&task_name=train",
            {**_android(device), "Content-Type": content_type},
            body,
            port=port,
        )
        for device, task_id in tasks
    ]
    accepted = 0

    async def send(conn: Connection, start: int) -> None:
        nonlocal accepted
        for i in range(start, len(requests), connections):
            status, reply = await conn.roundtrip(requests[i])
            if (
                status == 200
                and reply.startswith(b"{")
                and orjson.loads(reply)
                == {"status": "OK", "task_id": tasks[i][1], "task_name": "train"}
            ):
                accepted += 1
            elif status == 200 and not reply.startswith(b"{"):
                accepted += 1  # a CBOR reply
            else:
                raise RuntimeError(f"report refused: {status} {reply[:200]!r}")

    cpu0 = server.cpu_seconds()
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for k, conn in enumerate(conns):
            nursery.start_soon(send, conn, k)
    elapsed = time.perf_counter() - started
    cpu = server.cpu_seconds() - cpu0
    for conn in conns:
        await conn.stream.aclose()
    return accepted / elapsed, cpu


def stdlib_decode_rate(body: bytes) -> float:
    """Updates/s of ``json.loads`` + ``np.array(list, float32)`` per tensor (no validation)."""

    def decode() -> None:
        obj = json.loads(body)
        for tensor in obj["result"]["data"].values():
            np.array(tensor["data"], dtype=np.float32)

    decode()
    samples = []
    for _ in range(10):
        t0 = time.perf_counter()
        decode()
        samples.append(time.perf_counter() - t0)
    return 1.0 / statistics.median(samples)


async def main_async(args: argparse.Namespace) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    root = Path(tempfile.mkdtemp(prefix="edgefl-bench-jobs-"))
    try:
        print("exporting the bench jobs ...", flush=True)
        polls_dir, reports_dir = _export_jobs(root, args.devices, args.updates)

        print(
            f"\n/task polls: {args.devices} registered devices, {args.connections} connections,"
            f" {args.seconds:.0f} s per round, {args.rounds} rounds (medians)"
        )
        rates: dict[str, list[float]] = {"bare": [], "fast": [], "quart": []}
        lat: dict[str, list[float]] = {"bare": [], "fast": [], "quart": []}
        for _ in range(args.rounds):
            for kind in ("bare", "fast", "quart"):
                server = (
                    Server("bare")
                    if kind == "bare"
                    else Server("edgefl", polls_dir, fast_path=kind == "fast")
                )
                try:
                    reqs = await poll_requests(server.port, args.devices, register=kind != "bare")
                    rate, latencies = await load(
                        server.port, reqs, connections=args.connections, seconds=args.seconds
                    )
                finally:
                    server.close()
                rates[kind].append(rate)
                lat[kind] += latencies
        bare = statistics.median(rates["bare"])
        for kind, label in (
            ("bare", "bare hypercorn-trio ASGI"),
            ("fast", "edgefl (fast path)"),
            ("quart", "edgefl (quart-trio only)"),
        ):
            rate = statistics.median(rates[kind])
            print(
                f"  {label:28s} {rate:8.0f} req/s  {100 * rate / bare:5.1f} %   "
                f"p50 {_pct(lat[kind], 50):6.2f} ms  p99 {_pct(lat[kind], 99):6.2f} ms"
            )

        offered = args.wide / args.poll_interval
        print(
            f"\n/task polls from {args.wide} connections, each polling every"
            f" {args.poll_interval:g} s ({offered:.0f} req/s offered, fast path):"
        )
        server = Server("edgefl", polls_dir)
        try:
            reqs = await poll_requests(server.port, args.devices, register=True)
            rate, latencies = await load(
                server.port,
                reqs,
                connections=args.wide,
                seconds=max(args.seconds, 3 * args.poll_interval),
                rate=offered,
            )
        finally:
            server.close()
        print(
            f"  {rate:8.0f} req/s  p50 {_pct(latencies, 50):6.2f} ms  "
            f"p99 {_pct(latencies, 99):6.2f} ms"
        )

        _, json_body, cbor_body = _update_bodies()
        print(
            f"\n/result updates, 62,006 parameters, {args.updates} per round,"
            f" {args.report_connections} connections:"
        )
        for label, body, ctype, n in (
            ("JSON (Android form)", json_body, "application/json; charset=utf-8", args.updates),
            ("CBOR (typed arrays)", cbor_body, "application/cbor", args.updates * 3),
        ):
            results = []
            for r in range(args.rounds):
                server = Server("edgefl", reports_dir)
                try:
                    results.append(
                        await report_round(
                            server, body, ctype, n, args.report_connections, f"dev{r}"
                        )
                    )
                finally:
                    server.close()
            rate = statistics.median(x[0] for x in results)
            per_core = statistics.median(n / x[1] for x in results if x[1] > 0)
            print(
                f"  {label:22s} {len(body) / 1e6:5.2f} MB  {rate:7.0f} accepted/s"
                f"  ({per_core:.0f} per server CPU-second)"
            )
        base = stdlib_decode_rate(json_body)
        print(f"  stdlib json + np.array decode only: {base:7.0f} /s (the 4x baseline)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--wide", type=int, default=1000, help="connections for the p99 run")
    parser.add_argument(
        "--poll-interval", type=float, default=5.0, help="seconds between polls in the p99 run"
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--report-connections", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.serve_bare is not None:
        serve_bare(args.serve_bare)
        return
    trio.run(main_async, args)


if __name__ == "__main__":
    main()
