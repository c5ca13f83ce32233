#!/usr/bin/env bash
# The GPU rows of issue 6, to run on one H100 or H200 (none were available when the harness landed).
# Usage: bash benchmarks/gpu.sh [outdir]   (from the repository root, with vitkit, timm and transformers installed)
# Each command writes one JSON file (rows, ratios, machine, date, command); copy them into benchmarks/ and
# fill in the table in benchmarks/README.md.
set -euo pipefail
out=${1:-benchmarks/gpu}
mkdir -p "$out"
B16=vit_base_patch16_224

# 1. Inference, bf16, batch 256: vitkit against timm's best (compile max-autotune) and transformers.
#    Three vitkit modes, each against the same peers: compiled (same mode as timm), compiled without
#    inductor's graphs + vitkit's own CUDA graph, and eager + CUDA graph.
vitkit bench $B16 --device cuda --dtype bf16 --batch 256 --compile max-autotune --peer-compile max-autotune \
  --compare timm,hf --warmup 10 --iters 30 --json "$out/b16_infer_bf16_b256_maxautotune.json"
vitkit bench $B16 --device cuda --dtype bf16 --batch 256 --compile max-autotune-no-cudagraphs --cuda-graphs \
  --peer-compile max-autotune --compare timm --warmup 10 --iters 30 --json "$out/b16_infer_bf16_b256_graphs.json"
vitkit bench $B16 --device cuda --dtype bf16 --batch 256 --compile off --cuda-graphs \
  --peer-compile max-autotune --compare timm --warmup 10 --iters 30 --json "$out/b16_infer_bf16_b256_eager_graphs.json"

# 2. Training step (fwd + bwd + fused AdamW, bf16 autocast), batch 128.
vitkit bench $B16 --device cuda --mode train --dtype bf16 --batch 128 --compile max-autotune \
  --peer-compile max-autotune --compare timm,hf --warmup 10 --iters 30 --json "$out/b16_train_bf16_b128.json"
vitkit bench $B16 --device cuda --mode train --dtype bf16 --batch 128 --compile default --cuda-graphs \
  --peer-compile max-autotune --compare timm --warmup 10 --iters 30 --json "$out/b16_train_bf16_b128_graphs.json"

# 3. FP8 matrix products (vitkit) against timm's best bf16 inference.
vitkit bench $B16 --device cuda --dtype fp8 --batch 256 --compile max-autotune --peer-compile max-autotune \
  --compare timm --warmup 10 --iters 30 --json "$out/b16_infer_fp8_b256.json"

# 4. Memory against tokens: 224, 384, 512, 1024 (4,096 tokens at 1024²), batch 8, and the largest batch.
vitkit bench $B16 --device cuda --dtype bf16 --sweep --batch 8 --compare timm --warmup 3 --iters 10 \
  --json "$out/b16_sweep_bf16_b8.json"
vitkit bench $B16 --device cuda --dtype bf16 --image-size 1024 --batch 8 --max-batch --max-batch-limit 1024 \
  --compare timm --warmup 3 --iters 5 --json "$out/b16_1024_maxbatch.json"

# 5. FP8 agreement with bf16 on a trained model (digits; the ImageNet-val check needs pretrained weights).
python benchmarks/fp8_agreement.py --device cuda --out "$out/fp8_agreement_digits_cuda.json"
