"""Load benchmark of the cloud offload service on loopback: micro-batching on vs off, side by side.

    python benchmarks/perf_offload.py                       # random-weight resnet20_cifar cloud, about a minute
    python benchmarks/perf_offload.py --run runs/c100 --clients 16 --requests 2000 --json perf_offload.json

For each mode it starts the real service (``meanet cloud serve``, TLS + bearer token, in its own process) on a free
loopback port, then ``--clients`` edge threads, each with its own ``RemoteCloud``, send a fixed total of
``--requests`` requests of ``--images-per-request`` uint8 images as fast as the service answers. It prints a table
and writes JSON with, per mode: throughput (answered images/s over the wall time), client-side p50/p99 latency per
request, the service's mean batch size, errors (requests that ended in an edge fallback), retries, lost requests
(no result at all, or a wrong number of labels: the goal is 0) and wrong labels (compared with the same model run
in this process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch

from fl_client.offload import RemoteCloud
from fl_server.offload.handoff import load_cloud_from_run
from meanet_core.inference.engine import LocalCloud
from meanet_core.models import CloudModel, build_cloud
from meanet_core.training.checkpoint import atomic_save, cloud_payload
from meanet_core.trust.tls import DevCertificates, write_dev_certificates

TOKEN = "benchmark-token-" + os.urandom(8).hex()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_service(
    run: Path, certs: DevCertificates, args: argparse.Namespace, batching: bool
) -> tuple[subprocess.Popen[str], str]:
    """``meanet cloud serve`` in a child process; returns it and its URL once /health answers."""
    port = free_port()
    cmd = [
        sys.executable, "-m", "meanet_cli.main", "cloud", "serve", "--run", str(run), "--host", "127.0.0.1",
        "--port", str(port), "--certfile", str(certs.server_cert), "--keyfile", str(certs.server_key),
        "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms),
        "--micro-batching" if batching else "--no-micro-batching",
    ]  # fmt: skip
    if args.server_threads:
        cmd += ["--threads", str(args.server_threads)]
    env = {**os.environ, "MEANET_CLOUD_TOKEN": TOKEN}
    log_path = certs.ca_cert.parent.parent / f"service-{port}.log"
    with open(log_path, "w") as log_file:  # a file, not a pipe: nobody reads it while the service runs
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, text=True)
    url = f"https://127.0.0.1:{port}"
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    deadline = time.monotonic() + 120
    with httpx.Client(verify=ctx, timeout=2) as c:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the service exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                if c.get(f"{url}/health").status_code == 200:
                    return proc, url
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError(f"the service did not answer /health on {url} within 120 s")


def run_mode(
    name: str, url: str, certs: DevCertificates, pool: list[torch.Tensor], expected: list[torch.Tensor], args: Any
) -> dict[str, Any]:
    """``args.requests`` requests from ``args.clients`` threads; per-request latency, errors, lost, wrong."""
    n_req = args.requests
    latency = np.full(n_req, np.nan)
    status = ["lost"] * n_req  # overwritten by "ok", "fallback" or "wrong"
    next_index = iter(range(n_req))
    lock = threading.Lock()
    clouds: list[RemoteCloud] = []
    start = threading.Barrier(args.clients + 1)

    def edge() -> None:
        cloud = RemoteCloud(
            url,
            token=TOKEN,
            ca_certfile=certs.ca_cert,
            timeout_s=args.timeout,
            retries=2,
            macs_per_image=1,
            circuit_failures=0,  # every request tries the service: the benchmark counts what happens to each
        )
        with lock:
            clouds.append(cloud)
        cloud.classify(pool[0])  # warm-up: TLS handshake and keep-alive connection
        start.wait()
        while True:
            with lock:
                i = next(next_index, None)
            if i is None:
                break
            images = pool[i % len(pool)]
            t0 = time.perf_counter()
            try:
                reply = cloud.classify(images)
            except Exception:  # a lost request: no result at all (the client must never do this)
                continue
            latency[i] = time.perf_counter() - t0
            if len(reply.labels) != len(images) or len(reply.ok) != len(images):
                continue  # lost: the edge could not attribute the answers
            if not reply.ok.all():
                status[i] = "fallback"
            else:
                status[i] = "ok" if torch.equal(reply.labels, expected[i % len(pool)]) else "wrong"

    threads = [threading.Thread(target=edge, daemon=True) for _ in range(args.clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ctx = ssl.create_default_context(cafile=str(certs.ca_cert))
    with httpx.Client(verify=ctx, headers={"Authorization": f"Bearer {TOKEN}"}) as c:
        server = c.get(f"{url}/metrics.json").json()
    for cloud in clouds:
        cloud.close()
    answered = sum(s in ("ok", "wrong") for s in status)
    sent_requests = args.requests + args.clients  # + one warm-up request per client
    done = latency[~np.isnan(latency)] * 1e3
    return {
        "mode": name,
        "requests": n_req,
        "images": n_req * args.images_per_request,
        "wall_s": wall,
        "throughput_images_per_s": answered * args.images_per_request / wall,
        "latency_ms_p50": float(np.percentile(done, 50)) if done.size else None,
        "latency_ms_p99": float(np.percentile(done, 99)) if done.size else None,
        "server_mean_batch_size": server["mean_batch_size"],
        "server_latency_ms_p50": server["latency_ms"]["p50"],
        "errors": status.count("fallback"),
        "retries": sum(c.stats.attempts for c in clouds) - sent_requests,
        "lost": status.count("lost"),
        "wrong": status.count("wrong"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="run folder to serve (default: a random resnet20_cifar)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent edge clients (threads)")
    ap.add_argument("--requests", type=int, default=400, help="requests per mode, all clients together")
    ap.add_argument("--images-per-request", type=int, default=8, help="complex samples an edge sends per batch")
    ap.add_argument("--max-batch", type=int, default=128)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=30.0, help="client deadline per request (s)")
    ap.add_argument("--server-threads", type=int, default=None, help="torch threads of the service")
    ap.add_argument("--modes", default="on,off", help="micro-batching modes to run, in order")
    ap.add_argument("--json", type=Path, default=Path("perf_offload.json"))
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="meanet-offload-") as tmp:
        certs = write_dev_certificates(Path(tmp) / "tls")
        model: CloudModel
        if args.run is None:
            torch.manual_seed(0)
            model = build_cloud("resnet20_cifar", 100).eval()
            run = Path(tmp) / "run"
            atomic_save(cloud_payload(model, 100), run / "cloud.pt")
        else:
            run, model = args.run, load_cloud_from_run(args.run)
        side = model.input_size
        g = torch.Generator().manual_seed(0)
        shape = (args.images_per_request, 3, side, side)
        pool = [torch.randint(0, 256, shape, dtype=torch.uint8, generator=g) for _ in range(16)]
        local = LocalCloud(model)
        expected = [local.classify(x).labels for x in pool]
        print(
            f"serving {model.arch} ({local.macs_per_image / 1e6:.1f}M MACs/image); {args.clients} clients, "
            f"{args.requests} requests x {args.images_per_request} images per mode"
        )
        results = []
        for mode in args.modes.split(","):
            proc, url = start_service(run, certs, args, batching=mode == "on")
            try:
                results.append(run_mode(f"micro-batching {mode}", url, certs, pool, expected, args))
            finally:
                proc.terminate()
                proc.wait(30)

    print(
        f"{'mode':<20}{'img/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'batch':>8}"
        f"{'errors':>8}{'retries':>8}{'lost':>6}{'wrong':>7}"
    )
    for r in results:
        print(
            f"{r['mode']:<20}{r['throughput_images_per_s']:>9.1f}"
            f"{r['latency_ms_p50']:>9.1f}{r['latency_ms_p99']:>9.1f}{r['server_mean_batch_size']:>8.1f}"
            f"{r['errors']:>8}{r['retries']:>8}{r['lost']:>6}{r['wrong']:>7}"
        )
    report = {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__},
        "results": results,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"report: {args.json}")


if __name__ == "__main__":
    main()
