"""Load test of `vitkit serve`: dynamic batching against one request at a time, on this machine's CPU.

For each model (Ti/16 and S/16 at 224, random weights made here) the script saves the model, starts
`vitkit serve` on 127.0.0.1 (a subprocess), sends a bounded number of concurrent requests with a bounded
httpx client (three scikit-image photographs of different sizes, half of them asking for the 160 px input,
so two token counts, 197 and 101, are in flight), stops the server and records throughput, p50/p95/p99
latency and errors per load to JSON. Modes: `batched` (--max-batch 32 --max-delay-ms 10) and
`one-at-a-time` (--max-batch 1 --max-delay-ms 0), both servers up, rounds alternating; then an overload run (--max-queue 8, 64 clients) that
must answer the excess with fast 503s.

    python benchmarks/serve_load.py --out benchmarks/serve_load_cpu.json
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import io
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"Ti/16": "vit_tiny_patch16_224", "S/16": "vit_small_patch16_224"}


def machine() -> dict:
    info = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            k, _, v = line.partition(":")
            if k.strip() in ("Model name", "CPU family", "Model", "CPU(s)", "Thread(s) per core"):
                info[k.strip()] = v.strip()
    except OSError:
        pass
    info["platform"] = platform.platform()
    info["python"] = platform.python_version()
    import torch

    info["torch"] = torch.__version__
    info["loadavg_at_start"] = os.getloadavg()
    return info


def photos() -> list[bytes]:
    from PIL import Image
    from skimage import data

    out = []
    for name in ("astronaut", "chelsea", "coffee"):  # 512x512, 300x451, 400x600
        buf = io.BytesIO()
        Image.fromarray(np.asarray(getattr(data, name)())).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, model_dir: Path, args: list[str], threads: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=str(threads))
        self.cmd = [sys.executable, "-m", "vitkit.cli.main", "serve", str(model_dir), "--port", str(self.port),
                    "--device", "cpu", "--no-access-log", "--sizes", "160", *args]
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        end = time.monotonic() + 180
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited: {self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the server did not become ready")

    def stop(self) -> int:
        self.proc.terminate()
        rc = self.proc.wait(60)
        self.proc.stderr.close()
        return rc


async def load(url: str, images: list[bytes], requests: int, concurrency: int) -> dict:
    """``requests`` POSTs from ``concurrency`` clients; each request: photo i % 3, size 224 or 160 alternating."""
    lat, statuses, batch_sizes, fast_refusals = [], {}, [], []
    queue = list(range(requests))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        async def worker():
            while queue:
                i = queue.pop()
                size = "224" if i % 2 == 0 else "160"
                t0 = time.perf_counter()
                try:
                    r = await client.post(f"{url}/v1/classify?size={size}", content=images[i % len(images)],
                                          headers={"content-type": "image/jpeg"})
                    code = r.status_code
                except httpx.HTTPError as e:
                    code = type(e).__name__
                dt = time.perf_counter() - t0
                statuses[str(code)] = statuses.get(str(code), 0) + 1
                if code == 200:
                    lat.append(dt)
                    batch_sizes.append(r.json()["timing"]["batch_size"])
                else:
                    fast_refusals.append(dt)

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    ms = lambda q, xs: round(float(np.percentile(xs, q)) * 1e3, 1) if xs else None  # noqa: E731
    return {"concurrency": concurrency, "requests": requests, "wall_s": round(wall, 3),
            "throughput_rps": round(len(lat) / wall, 2), "statuses": statuses,
            "errors": requests - statuses.get("200", 0),
            "latency_ms": {"p50": ms(50, lat), "p95": ms(95, lat), "p99": ms(99, lat)},
            "mean_batch_size": round(float(np.mean(batch_sizes)), 2) if batch_sizes else None,
            "refused_latency_ms": {"p50": ms(50, fast_refusals), "p99": ms(99, fast_refusals),
                                   "max": ms(100, fast_refusals)} if fast_refusals else None}


def forward_only(models: list[str], threads: int, batches=(1, 4, 16, 32), repeats: int = 5) -> list[dict]:
    """What batching can give at most on this CPU: the model's forward alone (BatchingHandler.forward,
    in this process, no HTTP, no decoding), ms per image at each batch size (median of ``repeats``)."""
    import torch

    import vitkit
    from vitkit.serve.handler import BatchingHandler

    torch.set_num_threads(threads)
    rows = []
    for short in models:
        torch.manual_seed(0)
        h = BatchingHandler(vitkit.create_model(MODELS[short]), device="cpu", max_batch=max(batches))
        for b in batches:
            x = torch.randn(b, 3, 224, 224)
            h.forward(x)  # warm
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                h.forward(x)
                times.append(time.perf_counter() - t0)
            per = float(np.median(times)) / b * 1e3
            rows.append({"model": short, "batch": b, "ms_per_image": round(per, 2),
                         "images_per_s": round(1e3 / per, 2), "repeats": repeats, "threads": threads})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "serve_load_cpu.json"))
    ap.add_argument("--models", default="Ti/16,S/16")
    ap.add_argument("--requests", default="Ti/16=192,S/16=96", help="requests per load, per model")
    ap.add_argument("--loads", default="1,8,32", help="concurrent clients")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of each server (OMP_NUM_THREADS; default 1)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per mode and load, alternating; the median is kept")
    ap.add_argument("--forward-only", action="store_true",
                    help="time the model's forward alone at batch 1..32 in this process (no server) instead")
    args = ap.parse_args()
    import torch

    if args.forward_only:
        doc = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), "forward_only": forward_only(args.models.split(","), args.threads)}
        doc["machine"]["loadavg_at_end"] = os.getloadavg()
        Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
        print(f"wrote {args.out}")
        return 0

    import vitkit

    counts = dict(kv.split("=") for kv in args.requests.split(","))
    loads = [int(v) for v in args.loads.split(",")]
    images = photos()
    doc = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "server_threads": args.threads,
           "note": "throughput_rps, latency_ms: the median round of --rounds (rounds alternate between the two "
                   "servers); random weights; photographs 512x512, 300x451, 400x600 JPEG; half the requests ask for 160 px "
                   "(101 tokens), half for 224 px (197 tokens); one server process per mode",
           "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for short in args.models.split(","):
            torch.manual_seed(0)
            model = vitkit.create_model(MODELS[short])
            d = Path(tmp) / short.replace("/", "")
            vitkit.save(model, d)
            n = int(counts.get(short, 96))
            modes = {"batched": ["--max-batch", "32", "--max-delay-ms", "10"],
                     "one-at-a-time": ["--max-batch", "1", "--max-delay-ms", "0"]}
            # both servers up at once (an idle one costs nothing); rounds alternate between them, so a change
            # in the machine's other load during the run falls on both modes alike
            servers = {m: Server(d, f, args.threads) for m, f in modes.items()}
            try:
                for srv in servers.values():
                    asyncio.run(load(srv.url, images, 8, 4))  # warm the client path; not recorded
                for c in loads:
                    rounds = {m: [] for m in modes}
                    for _ in range(args.rounds):
                        for m, srv in servers.items():
                            rounds[m].append(asyncio.run(load(srv.url, images, n, c)))
                    for m, rs in rounds.items():
                        best = sorted(rs, key=lambda r: r["throughput_rps"])[len(rs) // 2]  # the median round
                        r = dict(best, model=short, mode=m, server_flags=modes[m], rounds=len(rs),
                                 throughput_rps_rounds=[x["throughput_rps"] for x in rs],
                                 p99_ms_rounds=[x["latency_ms"]["p99"] for x in rs],
                                 errors=sum(x["errors"] for x in rs))
                        print(json.dumps(r), flush=True)
                        doc["results"].append(r)
            finally:
                for m, srv in servers.items():
                    print(f"# {short} {m}: server exit status {srv.stop()}", flush=True)
            # overload: a small queue and more clients than it holds -> fast 503 + Retry-After for the excess
            flags = ["--max-batch", "32", "--max-delay-ms", "10", "--max-queue", "8"]
            srv = Server(d, flags, args.threads)
            try:
                r = asyncio.run(load(srv.url, images, n, 64))
                r.update(model=short, mode="overload (max-queue 8, 64 clients)", server_flags=flags)
                print(json.dumps(r), flush=True)
                doc["results"].append(r)
            finally:
                srv.stop()
    doc["machine"]["loadavg_at_end"] = os.getloadavg()
    summary = {}
    for short in args.models.split(","):
        for c in loads:
            b = [r for r in doc["results"] if r["model"] == short and r["mode"] == "batched" and r["concurrency"] == c]
            o = [r for r in doc["results"] if r["model"] == short and r["mode"] == "one-at-a-time"
                 and r["concurrency"] == c]
            if b and o and o[0]["throughput_rps"]:
                summary[f"{short} x{c}"] = round(b[0]["throughput_rps"] / o[0]["throughput_rps"], 2)
    doc["batched_over_one_at_a_time_throughput"] = summary
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(summary))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
