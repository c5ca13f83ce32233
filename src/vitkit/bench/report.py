"""The bench's JSON document, the machine description, and the printed table."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from ..utils.atomic import atomic_write_text

SCHEMA = "vitkit.bench/1"


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


# instruction-set features that decide which CPU kernels are fast (MKL vs oneDNN, bf16, int8)
_ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8")


def _cpu_info() -> dict[str, Any]:
    """The first processor's model name, vendor, family/model/stepping (an "AMD EPYC" name alone does not tell
    Zen 4 from Zen 5, whose fp32 kernels differ ~2x) and the ISA flags in _ISA_FLAGS it has."""
    info: dict[str, Any] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    break  # the first processor is enough
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key in ("model name", "vendor_id", "cpu family", "model", "stepping"):
                    info[key.replace(" ", "_")] = value
                elif key == "flags":
                    have = set(value.split())
                    info["isa"] = [f for f in _ISA_FLAGS if f in have]
    except OSError:
        pass
    info.setdefault("model_name", platform.processor() or platform.machine())
    return info


def machine_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, load, GPU, library versions."""
    cpu = _cpu_info()
    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "cpu": cpu["model_name"], "cpu_id": cpu,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "load_avg": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "versions": {p: _version(p) for p in ("torch", "vitkit", "timm", "transformers", "onnxruntime", "onnx")},
    }
    info["versions"]["torch"] = torch.__version__
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                       "memory_gb": round(props.total_memory / 2**30, 1), "cuda": torch.version.cuda,
                       "cudnn": torch.backends.cudnn.version()}
    return info


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def write_json(doc: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write atomically: a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"--json {str(path)!r} is a directory; give a file name")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"--json {str(path)!r}: folder {str(path.parent)!r} does not exist")
    atomic_write_text(path, json.dumps(doc, indent=2) + "\n")
    return path


def _fmt(v: Any, spec: str) -> str:
    if v is None:
        return "-".rjust(int(spec.split(".")[0] or 0))
    return format(v, spec)


def format_table(doc: dict[str, Any]) -> str:
    """A fixed-width table of the rows, then the ratios."""
    w = max([22] + [len(r["impl"]) for r in doc["rows"]])  # "vitkit[onnxruntime-int8]" is 24
    lines = [f"{'impl':{w}s} {'res':>5s} {'tok':>5s} {'batch':>5s} {'dtype':>5s} {'ms/step':>9s} {'img/s':>9s} "
             f"{'TFLOP/s':>8s} {'%peak':>6s} {'mem MB':>8s} {'spread':>6s} {'maxdiff':>8s}"]
    for r in doc["rows"]:
        lines.append(f"{r['impl']:{w}s} {r['image_size']:5d} {r['tokens']:5d} {r['batch']:5d} {r['dtype']:>5s} "
                     f"{r['median_s'] * 1e3:9.2f} {r['img_per_s']:9.1f} {_fmt(r['tflops'], '8.3f')} "
                     f"{_fmt(r['pct_of_peak'], '6.1f')} {_fmt(r['peak_mem_mb'], '8.1f')} "
                     f"{r['spread'] * 100:5.1f}% {_fmt(r['max_abs_diff_vs_vitkit'], '8.1e')}")
    for q in doc.get("ratios", []):
        lines.append(f"ratio {q['numerator']} / {q['denominator']} at {q['image_size']}px batch {q['batch']}: "
                     f"{q['ratio']:.3f}x img/s")
    for m in doc.get("max_batch", []):
        more = " (hit the limit)" if m["hit_limit"] else ""
        lines.append(f"max batch {m['impl']} at {m['image_size']}px: {m['max_batch']}{more}")
    return "\n".join(lines)
