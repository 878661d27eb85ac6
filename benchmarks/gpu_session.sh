#!/usr/bin/env bash
# One device call (see .library device README): checks, then times, every variant; JSON under $OUT.
# Usage on the GPU machine: bash benchmarks/gpu_session.sh   (OUT defaults to benchmarks/results/raw)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results/raw}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
M=(--model Qwen/Qwen3-0.6B --dummy-weights)

# m1: batch-1 latency, FoloVLLM vs transformers' generate in the same process.
python3 benchmarks/latency_test.py --milestone m1 "${M[@]}" --input-len 128 --output-len 256 \
    --num-iters 3 --hf --out "$OUT/m1_latency.json" || echo "m1 latency FAILED"

# m1 vs m2 on a scaled nano-vllm workload (32 requests, lengths in [100, 256]) so m1 ends in minutes.
python3 benchmarks/compare.py --milestones m1 m2 --out "$OUT/m2_vs_m1.json" -- "${M[@]}" \
    --num-seqs 32 --max-input-len 256 --max-output-len 256 || echo "m1 vs m2 FAILED"

# m2 on the full nano-vllm workload (256 requests, 133,966 output tokens).
python3 benchmarks/throughput_test.py --milestone m2 "${M[@]}" --out "$OUT/m2_throughput.json" \
    || echo "m2 full workload FAILED"
