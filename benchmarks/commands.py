"""What the benchmark scripts share: a command run with one torch thread and timed, and the CPU it ran on."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path


def cpu_id() -> str:
    """Vendor, family, model and name of the first processor: an "AMD EPYC" name alone does not tell Zen 3 from Zen 5."""
    info: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if ":" in line:
            k, v = (s.strip() for s in line.split(":", 1))
            info.setdefault(k, v)
    return (f"{info.get('vendor_id')} family {info.get('cpu family')} model {info.get('model')} "
            f"({info.get('model name')})")


def run(cmd: list[str], log: Path, append: bool = False) -> dict:
    """Run ``cmd`` with OMP_NUM_THREADS=1, its output into ``log``; -> command, wall and CPU seconds (user + system
    of the command and its children). A failure stops the script, naming the log."""
    t0, c0 = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "a" if append else "w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        p = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}; see {log}")
    return {"command": " ".join(cmd), "wall_s": round(time.time() - t0, 1),
            "cpu_s": round((c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime), 1)}
