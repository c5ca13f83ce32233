"""Print a Markdown table of the `vitkit bench` JSON files given (or all in benchmarks/).

    python benchmarks/summarise.py [FILE.json ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    files = [Path(p) for p in paths] or sorted(Path(__file__).parent.glob("*.json"))
    print("| file | impl | mode | res | batch | dtype | median ms | img/s | TFLOP/s | % peak | mem MB | vs peer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for f in files:
        doc = json.loads(f.read_text())
        if doc.get("schema") != "vitkit.bench/1":
            continue
        for r in doc["rows"]:
            ratios = [f"{q['ratio']:.2f}× {q['denominator']}" for q in doc["ratios"]
                      if q["numerator"] == r["impl"] and q["image_size"] == r["image_size"]
                      and q["batch"] == r["batch"]]
            mem = "-" if r["peak_mem_mb"] is None else f"{r['peak_mem_mb']:.0f}"
            print(f"| {f.name} | {r['impl']} | {r['mode']} | {r['image_size']} | {r['batch']} | {r['dtype']} | "
                  f"{r['median_s'] * 1e3:.0f} | {r['img_per_s']:.2f} | {r['tflops']:.3f} | {r['pct_of_peak']:.0f} | "
                  f"{mem} | {', '.join(ratios)} |")


if __name__ == "__main__":
    main(sys.argv[1:])
