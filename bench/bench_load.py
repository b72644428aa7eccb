"""Load benchmark: 10,000 lightweight simulated devices against one ``edgefl-server serve``.

The server runs as a subprocess on 127.0.0.1 serving the XOR job (exported here once, or
``--jobs DIR``). The devices are plain state (id, cookie, pending task) spread over
``--connections`` keep-alive HTTP/1.1 connections; each connection cycles through its devices:
``POST /task`` with the device's cookie, and when that hands out a task, ``POST /result`` with a
small fixed diff. Requests are written and parsed by hand over trio sockets so the client costs
as little CPU as possible (both run on the same machine).

Reported: requests per second, p50/p99/max latency per route, updates accepted, model versions
made, and the server's resident memory sampled every ``--sample`` seconds (peak and the samples),
with the RSS growth between the first and the last quarter of the run (memory must not grow with
the number of requests or updates, DESIGN.md "Performance targets").

Usage::

    python bench/bench_load.py                 # 10,000 devices, 150 s
    python bench/bench_load.py --duration 30 --devices 2000

Only loopback addresses are used, and every loop is bounded by the run's deadline.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import sysconfig
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any

import attrs
import numpy as np
import tomli_w
import trio


def export_xor_job(root: Path, *, selection: int, k: int) -> Path:
    """Export the XOR job (EDIP §12) into ``root/xor_et`` with load-friendly settings."""
    import torch
    from torch import nn

    from edgefl import DeviceManagerConfig, DeviceModel, ETFedBuffRecipe, ModelManagerConfig

    class XOR(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear1 = nn.Linear(2, 4)
            self.linear2 = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.linear2(torch.sigmoid(self.linear1(x)))

    torch.manual_seed(0)
    recipe = ETFedBuffRecipe(
        "xor_et",
        DeviceModel(XOR()),
        (1, 2),
        (1,),
        ModelManagerConfig(global_lr=1.0, num_updates_for_model=k, max_model_version=1_000_000),
        DeviceManagerConfig(device_selection_size=selection, min_hole_to_fill=1),
        device_training_params={"epoch": 1, "lr": 0.1, "batch_size": 1},
    )
    folder = recipe.export(root / "xor_et")
    path = folder / "job.toml"
    doc = tomllib.loads(path.read_text())
    doc["device_manager"]["task_timeout"] = 30.0
    doc["device_manager"]["min_devices_to_start"] = 1
    path.write_text(tomli_w.dumps(doc))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _listening(base: str) -> bool:
    import httpx

    try:
        async with httpx.AsyncClient(base_url=base) as client:
            return (await client.get("/healthz")).status_code == 200
    except httpx.TransportError:
        return False


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


@attrs.define
class Device:
    device_id: str
    cookie: bytes = b"{}"
    task_id: str | None = None
    cookie_obj: Any = None


@attrs.define
class Stats:
    latencies: dict[str, list[float]] = attrs.Factory(lambda: {"task": [], "result": []})
    statuses: dict[str, int] = attrs.Factory(dict)
    accepted: int = 0
    errors: int = 0


class Connection:
    """One keep-alive HTTP/1.1 connection with a tiny hand-written request/response codec."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def request(self, path: bytes, headers: bytes, body: bytes) -> tuple[int, bytes]:
        await self.stream.send_all(
            b"POST " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            + headers
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        while b"\r\n\r\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            self.buffer += data
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        while len(rest) < length:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            rest += data
        self.buffer = rest[length:]
        return status, rest[:length]


async def run_connection(
    port: int,
    devices: list[Device],
    job_id: str,
    diff: bytes,
    deadline: float,
    stats: Stats,
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    conn = Connection(stream)
    task_path = b"/task?job_id=" + job_id.encode()
    async with stream:
        while trio.current_time() < deadline:
            for device in devices:
                if trio.current_time() >= deadline:
                    break
                headers = b"X-Flare-Device-ID: " + device.device_id.encode() + b"\r\n"
                started = time.perf_counter()
                status, body = await conn.request(
                    task_path, headers, b'{"cookie":' + device.cookie + b"}"
                )
                stats.latencies["task"].append(time.perf_counter() - started)
                if status != 200:
                    stats.errors += 1
                    continue
                reply = json.loads(body)
                word = reply["status"]
                stats.statuses[word] = stats.statuses.get(word, 0) + 1
                if "cookie" in reply:
                    device.cookie = json.dumps(reply["cookie"]).encode()
                if word != "OK":
                    continue
                path = (
                    b"/result?job_id="
                    + job_id.encode()
                    + b"&task_id="
                    + reply["task_id"].encode()
                    + b"&task_name=train"
                )
                report = b'{"result":{"kind":"et_tensor_diff","data":' + diff + b'},"cookie":'
                report += device.cookie + b"}"
                started = time.perf_counter()
                status, body = await conn.request(path, headers, report)
                stats.latencies["result"].append(time.perf_counter() - started)
                if status == 200 and b'"message"' not in body:
                    stats.accepted += 1
                elif status != 200:
                    stats.errors += 1


async def sample_memory(
    pid: int, every: float, deadline: float, out: list[tuple[float, int]]
) -> None:
    start = trio.current_time()
    while trio.current_time() < deadline:
        out.append((trio.current_time() - start, rss_kib(pid)))
        await trio.sleep(every)
    out.append((trio.current_time() - start, rss_kib(pid)))


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    import httpx

    workdir = Path(tempfile.mkdtemp(prefix="edgefl-load-"))
    if args.jobs is None:
        print("exporting the XOR job ...", file=sys.stderr)
        export_xor_job(workdir / "jobs", selection=args.selection, k=args.k)
        jobs = workdir / "jobs"
    else:
        jobs = Path(args.jobs)
    script = Path(sysconfig.get_path("scripts")) / "edgefl-server"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "edgefl"]
    log_path = workdir / "server.log"
    port = free_port()  # the server logs its bound port only at info level
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFL_")}
    with log_path.open("wb") as log:
        server = await trio.lowlevel.open_process(
            [
                *command,
                "serve",
                "--jobs",
                str(jobs),
                "--state-dir",
                str(workdir / "state"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                args.log_level,
                "--retry-wait",
                "5",
            ],
            stdout=log,
            stderr=log,
            env=env,
        )
    try:
        base = f"http://127.0.0.1:{port}"
        with trio.fail_after(60):
            while not await _listening(base):
                if server.poll() is not None:
                    raise RuntimeError(log_path.read_text())
                await trio.sleep(0.1)
        async with httpx.AsyncClient(base_url=base) as client:
            r = await client.post(
                "/job", json={"job_name": "xor_et"}, headers={"X-Flare-Device-ID": "bench"}
            )
            job_id = r.json()["job_id"]
        diff = json.dumps(
            {
                f"net.{n}": {"sizes": list(s), "data": np.full(s, 0.001).tolist()}
                for n, s in {
                    "linear1.weight": (4, 2),
                    "linear1.bias": (4,),
                    "linear2.weight": (2, 4),
                    "linear2.bias": (2,),
                }.items()
            }
        ).encode()
        devices = [Device(f"load-{i:05d}") for i in range(args.devices)]
        stats = Stats()
        samples: list[tuple[float, int]] = []
        rss_start = rss_kib(server.pid)
        started = trio.current_time()
        deadline = started + args.duration
        per = max(1, len(devices) // args.connections)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample_memory, server.pid, args.sample, deadline, samples)
            for c in range(args.connections):
                chunk = devices[c * per : (c + 1) * per]
                if chunk:
                    nursery.start_soon(run_connection, port, chunk, job_id, diff, deadline, stats)
        elapsed = trio.current_time() - started
        peak = rss_kib(server.pid, "VmHWM")
        async with httpx.AsyncClient(base_url=base) as client:
            health = (await client.get("/healthz")).json()
    finally:
        server.terminate()
        with trio.move_on_after(30):
            await server.wait()
    total = sum(len(v) for v in stats.latencies.values())
    quarter = max(1, len(samples) // 4)
    first = statistics.mean(kib for _, kib in samples[:quarter])
    last = statistics.mean(kib for _, kib in samples[-quarter:])
    job = health["jobs"][0]
    return {
        "devices": args.devices,
        "connections": args.connections,
        "seconds": round(elapsed, 1),
        "requests": total,
        "requests_per_second": round(total / elapsed, 1),
        "latency_ms": {
            route: {
                "p50": round(percentile(v, 50) * 1000, 2),
                "p99": round(percentile(v, 99) * 1000, 2),
                "max": round(max(v) * 1000, 2) if v else None,
                "count": len(v),
            }
            for route, v in stats.latencies.items()
        },
        "task_statuses": stats.statuses,
        "http_errors": stats.errors,
        "updates_accepted_seen_by_clients": stats.accepted,
        "server": {
            "updates_accepted": job["updates_accepted"],
            "version": job["version"],
            "devices_known": job["devices_known"],
        },
        "rss_mib": {
            "at_start": round(rss_start / 1024, 1),
            "peak": round(peak / 1024, 1),
            "first_quarter_mean": round(first / 1024, 1),
            "last_quarter_mean": round(last / 1024, 1),
            "growth_first_to_last_quarter": round((last - first) / 1024, 1),
            "samples": [(round(t), round(kib / 1024, 1)) for t, kib in samples],
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--duration", type=float, default=150.0, help="seconds of load")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--selection", type=int, default=500, help="device_selection_size")
    parser.add_argument("--k", type=int, default=50, help="num_updates_for_model")
    parser.add_argument("--log-level", default="warning", help="the server's --log-level")
    parser.add_argument("--jobs", default=None, help="serve this jobs dir instead of the XOR job")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if not 1 <= args.connections <= args.devices:
        parser.error("--connections must be between 1 and --devices")
    results = trio.run(main_async, args)
    text = json.dumps(results, indent=1)
    print(text)
    if args.json is not None:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
