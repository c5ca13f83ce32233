"""Shared pieces of the service tests (no tests here): a tiny model folder, real photographs as
JPEG/PNG bytes, and the real server on a free loopback port, in a thread or in a subprocess."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import vitkit

SRC_DIR = Path(vitkit.__file__).resolve().parents[1]
LABELS = ["astronaut", "cat", "coffee", "rocket", "tree"]


def tiny_model(tmp_path: Path, image: int = 32, patch: int = 8, **kw) -> Path:
    """A 2-block, width-32 ViT with five named classes, saved as a vitkit folder."""
    cfg = dict(image_size=image, patch_size=patch, width=32, depth=2, heads=4, num_classes=len(LABELS),
               labels=list(LABELS))
    cfg.update(kw)
    model = vitkit.create_model(vitkit.ViTConfig(**cfg))
    torch.nn.init.normal_(model.head.weight, std=2.0)  # timm's zero head would give five equal scores
    out = tmp_path / "tiny-vit"
    vitkit.save(model, out)
    return out


def photo_bytes(name: str = "chelsea", fmt: str = "JPEG", size: int | None = None) -> bytes:
    """One of scikit-image's photographs (astronaut, chelsea, coffee), encoded."""
    from skimage import data

    img = Image.fromarray(np.asarray(getattr(data, name)()))
    if size:
        img = img.resize((size, size))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float = 30.0, step: float = 0.02):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if predicate():
                return True
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(step)
    raise TimeoutError("condition not met in time")


@contextlib.contextmanager
def thread_server(service, port: int | None = None):
    """The app on uvicorn in a thread on 127.0.0.1:PORT; yields the base URL, stops it on exit."""
    import uvicorn

    from vitkit.serve.app import create_app
    from vitkit.serve.server import uvicorn_config

    port = port or free_port()
    config = uvicorn_config(create_app(service), service, "127.0.0.1", port)
    server = uvicorn.Server(config)
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    try:
        wait_until(lambda: server.started, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(15)


@contextlib.contextmanager
def process_server(model_dir: Path, *args: str, port: int | None = None, wait_ready: bool = True, env: dict | None = None):
    """``vitkit serve MODEL_DIR --port PORT ARGS`` in a subprocess; yields (process, base URL).
    The process is terminated (then killed) on exit if it is still running."""
    import httpx

    port = port or free_port()
    e = dict(os.environ, PYTHONPATH=str(SRC_DIR), VITKIT_TEST_THREADS="1", OMP_NUM_THREADS="1")
    e.update(env or {})
    cmd = [sys.executable, "-m", "vitkit.cli.main", "serve", str(model_dir), "--port", str(port), "--device", "cpu",
           *args]
    proc = subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        if wait_ready:
            wait_until(lambda: proc.poll() is None and httpx.get(url + "/readyz", timeout=1).status_code == 200,
                       timeout=60, step=0.1)
        else:
            wait_until(lambda: httpx.get(url + "/healthz", timeout=1).status_code == 200, timeout=60, step=0.05)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        proc.stdout.close()
        proc.stderr.close()
