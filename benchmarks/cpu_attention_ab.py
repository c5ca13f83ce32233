"""The CPU attention kernel inside the model: SDPA against the explicit softmax(q kᵀ/√d) v, interleaved A/B.

    python benchmarks/cpu_attention_ab.py [--threads 2] [--json benchmarks/cpu_zen5_attention_ab.json]

For ViT-S/16 and ViT-B/16, bf16 and fp32 weights, batch 1 and 8: the whole forward with every block's attention
on SDPA and on the explicit product (``attn.cpu_plain_tokens``), the Linears on oneDNN as ``optimize_for_cpu``
puts them here, timed in alternation (median); and what ``optimize_for_cpu("auto")``'s own timing picks for the
attention on this machine (:func:`vitkit.inference.cpu.choose_cpu_attention`, 2 images).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import time

import torch

import vitkit
from vitkit.inference import cpu

from commands import cpu_id


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default="benchmarks/cpu_zen5_attention_ab.json")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rows = []
    for name in ("vit_small_patch16_224", "vit_base_patch16_224"):
        for dtype in (torch.bfloat16, torch.float32):
            m = vitkit.create_model(name).eval().to(dtype)
            cpu.optimize_for_cpu(m, "onednn")
            picked = cpu.choose_cpu_attention(m, 2)
            n = m.cfg.num_tokens
            for b in (1, 8):
                x = torch.randn(b, 3, 224, 224, dtype=dtype)
                t = {"sdpa": [], "plain": []}
                with torch.inference_mode():
                    for _ in range(1 + (6 if b == 8 else 15)):  # the first round is warm-up
                        for k in t:
                            for blk in m.blocks:
                                blk.attn.cpu_plain_tokens = n if k == "plain" else 0
                            t0 = time.perf_counter()
                            m(x)
                            t[k].append(time.perf_counter() - t0)
                s, p = (statistics.median(t[k][1:]) * 1e3 for k in ("sdpa", "plain"))
                rows.append({"model": name, "dtype": str(dtype).removeprefix("torch."), "batch": b,
                             "sdpa_ms": round(s, 1), "plain_ms": round(p, 1), "plain_speedup": round(s / p, 3),
                             "auto_picks": picked})
                print(json.dumps(rows[-1]), flush=True)
    out = {"benchmark": "CPU attention kernel in the model, interleaved A/B", "date": dt.datetime.now(dt.timezone.utc)
           .isoformat(timespec="seconds"), "cpu_id": cpu_id(), "threads": a.threads, "torch": torch.__version__,
           "command": f"python benchmarks/cpu_attention_ab.py --threads {a.threads} --json {a.json}", "rows": rows}
    with open(a.json, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
