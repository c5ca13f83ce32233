"""`vitkit serve` as a user runs it: a subprocess on a free port. SIGTERM drains (RELIABILITY 29), it binds
127.0.0.1 unless told (30), access logs are JSON lines, mistakes on the command line exit 2."""

from __future__ import annotations

import json
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from test_serve_support import free_port, photo_bytes, process_server, tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("serve-proc"))


def _non_loopback_address() -> str | None:
    """This machine's address on its default route (no packet is sent), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_loopback_by_default_json_access_log_and_sigterm_drain(model_dir):
    """One `vitkit serve` process (starting one costs seconds): it binds 127.0.0.1 only, logs a JSON line per
    request, and on SIGTERM turns readiness 503, refuses new work, finishes the requests in flight, exits 0."""
    jpg = photo_bytes("chelsea")
    port = free_port()
    with process_server(model_dir, "--max-delay-ms", "1500", "--max-batch", "8", port=port) as (proc, url):
        r = httpx.post(url + "/v1/classify", content=photo_bytes("coffee", "PNG"), headers={"content-type": "image/png"})
        assert r.status_code == 200
        assert httpx.post(url + "/v1/classify", content=b"text", headers={"content-type": "image/png"}).status_code == 400
        ip = _non_loopback_address()
        if ip is not None:
            with socket.socket() as s:
                s.settimeout(2)
                assert s.connect_ex((ip, port)) != 0, f"reachable on {ip}: the service must bind 127.0.0.1 only"
        with ThreadPoolExecutor(3) as ex:
            inflight = [ex.submit(httpx.post, url + "/v1/classify", content=jpg,
                                  headers={"content-type": "image/jpeg"}, timeout=30) for _ in range(3)]
            time.sleep(0.5)  # the three wait in the batcher (1.5 s delay)
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.2)
            r = httpx.get(url + "/readyz", timeout=5)
            assert r.status_code == 503 and r.json()["state"] == "draining"
            assert httpx.get(url + "/healthz", timeout=5).status_code == 200
            late = httpx.post(url + "/v1/classify", content=jpg, headers={"content-type": "image/jpeg"}, timeout=5)
            assert late.status_code == 503 and "shutting down" in late.json()["error"]
            assert late.headers["retry-after"] == "1"
            results = [f.result() for f in inflight]
        assert [r.status_code for r in results] == [200, 200, 200]
        assert [r.json()["timing"]["batch_size"] for r in results] == [3, 3, 3]
        assert proc.wait(20) == 0
        err = proc.stderr.read()
    assert "draining" in err and "Traceback" not in err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    classify = [row for row in lines if row["path"] == "/v1/classify"]
    assert sorted(row["status"] for row in classify) == [200, 200, 200, 200, 400, 503]
    assert all(row["client"].startswith("127.0.0.1:") and row["method"] == "POST" and row["ms"] >= 0 for row in classify)


def test_cli_mistakes_exit_2_without_traceback(model_dir, tmp_path, capsys):
    from vitkit.cli.main import main

    for args, words in ((["/no/such/model"], "does not exist"), ([str(model_dir), "--max-batch", "0"], "max_batch"),
                        ([str(model_dir), "--sizes", "12x"], "--sizes"), ([str(model_dir), "--port", "70000"], "--port")):
        assert main(["serve", *args]) == 2, args
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (args, err)
    # a folder that exists but holds no model: the server starts, cannot load it, says why, exits 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["serve", str(empty), "--port", str(free_port()), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "could not be loaded" in err and "Traceback" not in err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "127.0.0.1" in capsys.readouterr().out
