#!/usr/bin/env bash
# One device call (see the device tool's README): checks, then times, every variant; JSON under $OUT.
# Usage on the GPU machine: bash benchmarks/gpu_session.sh [m1] [m2] [m3] [m4check] [m4] [m5check] [m5]
#   [m6check] [m6] [graphtest] [prefill] [m7check] [m7kernel] [m7] [fastpath] [before] [fast] [final] [peer]
#   [s5check] [s5lat] [s5tput] [s5b] [s5c] [s5final]
#   (default: m1 m2 m3)
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results/raw}
mkdir -p "$OUT"
jobs=("$@")
[ ${#jobs[@]} -eq 0 ] && jobs=(m1 m2 m3)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
M=(--model Qwen/Qwen3-0.6B --dummy-weights)

for job in "${jobs[@]}"; do
  case $job in
  m1)  # batch-1 latency, FoloVLLM vs transformers' generate in the same process.
    python3 benchmarks/latency_test.py --milestone m1 "${M[@]}" --input-len 128 --output-len 256 \
        --num-iters 3 --hf --out "$OUT/m1_latency.json" || echo "m1 latency FAILED" ;;
  m2)  # m1 vs m2 on a scaled nano-vllm workload (32 requests, lengths in [100, 256]), then m2 in full.
    python3 benchmarks/compare.py --milestones m1 m2 --out "$OUT/m2_vs_m1.json" -- "${M[@]}" \
        --num-seqs 32 --max-input-len 256 --max-output-len 256 || echo "m1 vs m2 FAILED"
    python3 benchmarks/throughput_test.py --milestone m2 "${M[@]}" --out "$OUT/m2_throughput.json" \
        || echo "m2 full workload FAILED" ;;
  m3)  # m2 vs m3 on the full nano-vllm workload under the same 16 GiB of KV, then m3 with the
       # profiled budget (gpu_memory_utilization 0.9).
    python3 benchmarks/compare.py --milestones m2 m3 --out "$OUT/m3_vs_m2.json" -- "${M[@]}" \
        --kv-cache-memory-gb 16 || echo "m2 vs m3 FAILED"
    python3 benchmarks/throughput_test.py --milestone m3 "${M[@]}" --out "$OUT/m3_throughput.json" \
        || echo "m3 full workload FAILED" ;;
  m4check)  # correctness first: the GPU test set, greedy tokens vs transformers per backend.
    (cd m4_flash && PYTHONPATH=. python3 -m pytest tests/test_gpu.py tests/test_fused.py \
        tests/test_kernels.py tests/test_sample_kernel.py -q -p no:cacheprovider \
        > "$OUT/m4_gpu_tests.log" 2>&1; rc=$?; \
        PYTHONPATH=. python3 -m pytest tests/test_async.py -m gpu -q -p no:cacheprovider \
        >> "$OUT/m4_gpu_tests.log" 2>&1 || rc=1; \
        grep -E "passed|failed|Error" "$OUT/m4_gpu_tests.log" | tail -n 8; exit $rc) \
        || echo "m4 GPU tests FAILED"
    for opt in "--dtype float32" "--dtype bfloat16" "--dtype float32 --enforce-eager"; do
      python3 benchmarks/gpu_check.py --milestone m4 --attention-backend triton $opt \
          || echo "gpu_check m4 $opt: mismatch beyond near-ties"
    done ;;
  m4attn)  # attention alone: torch reference vs SDPA vs our kernels, with the roofline plot.
    python3 benchmarks/attention_bench.py --out "$OUT/m4_attention.json" \
        --plot "$OUT/m4_attention.png" || echo "attention bench FAILED" ;;
  m4)  # batch-1 latency (m3, m4 eager, m4 graphs), the nano-vllm workload (m4, m3), a step profile.
    L=(--input-len 128 --output-len 256 --num-iters 3)
    python3 benchmarks/latency_test.py --milestone m3 "${M[@]}" "${L[@]}" --out "$OUT/m4_baseline_m3_latency.json"
    python3 benchmarks/latency_test.py --milestone m4 "${M[@]}" "${L[@]}" --enforce-eager \
        --out "$OUT/m4_latency_eager.json"
    python3 benchmarks/latency_test.py --milestone m4 "${M[@]}" "${L[@]}" --out "$OUT/m4_latency.json"
    python3 benchmarks/throughput_test.py --milestone m4 "${M[@]}" --out "$OUT/m4_throughput.json" \
        || echo "m4 full workload FAILED"
    python3 benchmarks/step_profile.py --milestone m4 "${M[@]}" --batch 256 --context 512 \
        --steps 20 --top 20 --out "$OUT/m4_step_profile.json" || echo "m4 step profile FAILED"
    python3 benchmarks/throughput_test.py --milestone m3 "${M[@]}" \
        --out "$OUT/m4_baseline_m3_throughput.json" || echo "m3 full workload FAILED" ;;
  m5check)  # the m5 GPU test set (m4's plus chunked steps between decode graphs), log under $OUT.
    (cd m5_chunked && PYTHONPATH=. python3 -m pytest tests -m gpu -q -p no:cacheprovider -x \
        2>&1 | tee "$OUT/m5_gpu_tests.log") || echo "m5 GPU tests FAILED" ;;
  m5)  # prefill/decode interference, m4 vs m5 at budgets 512 / 2048 / 8192 (4 files: 3 JSON + PNG),
       # then the nano-vllm workload for m5 (chunked, budget 8192) and m4 in the same call.
    python3 m5_chunked/bench.py --out-dir "$OUT" "${M[@]}" || echo "m5 interference FAILED"
    python3 benchmarks/throughput_test.py --milestone m5 "${M[@]}" --out "$OUT/m5_throughput.json" \
        || echo "m5 full workload FAILED"
    python3 benchmarks/throughput_test.py --milestone m4 "${M[@]}" \
        --out "$OUT/m5_baseline_m4_throughput.json" || echo "m4 full workload FAILED" ;;
  m6check)  # the m6 GPU tests (prefix hits under CUDA graphs included), log under $OUT.
    (cd m6_prefix && PYTHONPATH=. python3 -m pytest tests -m gpu -q -p no:cacheprovider -x \
        2>&1 | tee "$OUT/m6_gpu_tests.log") || echo "m6 GPU tests FAILED" ;;
  m6)  # prefix caching, m5 vs m6 in one call: TTFT vs shared prefix 512 / 2048 / 8192 (+64-token
       # suffix) cold and warm, hit rate, no-sharing cost, few-shot workload (3 JSON + PNG).
    python3 m6_prefix/bench.py --out-dir "$OUT" "${M[@]}" || echo "m6 prefix bench FAILED" ;;
  graphtest)  # mixed-step CUDA graphs (cudagraph_mode="full") against decode-only graphs and the
               # torch backend: the graph tests of the m4 GPU set.
    (cd m4_flash && PYTHONPATH=. python3 -m pytest tests/test_gpu.py -k graph -q \
        -p no:cacheprovider 2>&1 | tail -n 4) || echo "m4 graph tests FAILED" ;;
  prefill)  # one prefill step of 64 and of 2048 tokens: eager (decode-only graphs, m4 as it was)
            # vs replayed from a token-count graph; then batch-1 latency with full graphs.
    for mode in decode full; do
      python3 benchmarks/eager_profile.py --milestone m6 "${M[@]}" --tokens 64 2048 --top 15 \
          --cudagraph-mode $mode --out "$OUT/m6_prefill_profile_$mode.json" \
          > "$OUT/m6_prefill_profile_$mode.log" 2>&1 \
          && grep "^== " "$OUT/m6_prefill_profile_$mode.log" || echo "profile $mode FAILED"
    done ;;
  m7check)  # m7's whole GPU set (GPTQ kernels, GEMV and sampler in bf16 at real shapes, graphs,
            # async), then greedy tokens vs transformers in float32 and bfloat16.
    (cd m7_gptq && PYTHONPATH=. python3 -m pytest tests -m gpu -q -p no:cacheprovider \
        > "$OUT/m7_gpu_tests.log" 2>&1; rc=$?; tail -n 15 "$OUT/m7_gpu_tests.log"; exit $rc) \
        || echo "m7 GPU tests FAILED"
    for opt in "--dtype float32" "--dtype bfloat16"; do
      python3 benchmarks/gpu_check.py --milestone m7 --attention-backend triton $opt \
          || echo "gpu_check m7 $opt: mismatch beyond near-ties"
    done ;;
  m7kernel)  # the GPTQ kernel alone vs bf16 F.linear at Qwen3-0.6B / 8B shapes, batch 1 / 8 / 64.
    python3 benchmarks/gptq_kernel_bench.py --out "$OUT/m7_gptq_kernel.json" \
        || echo "gptq kernel bench FAILED" ;;
  m7)  # bf16 vs GPTQ: memory, TPOT and tok/s at batch 1 / 8 / 64, Qwen3-0.6B and Qwen3-8B shapes.
    python3 m7_gptq/bench.py --out-dir "$OUT" || echo "m7 bench FAILED" ;;
  fastpath)  # the fast path (issue 10): the earlier m4 snapshot (.snap/*) and the current m4 in
             # one call, bf16 and fp8 KV; batch-1 latency, a step profile, fp8 accuracy.
    for snap in .snap/*; do
      python3 benchmarks/throughput_test.py --milestone "$snap" "${M[@]}" \
          --out "$OUT/fastpath_before_throughput.json" || echo "$snap FAILED"
    done
    python3 benchmarks/throughput_test.py --milestone m4 "${M[@]}" \
        --out "$OUT/fastpath_after_throughput.json" || echo "m4 FAILED"
    python3 benchmarks/throughput_test.py --milestone m4 "${M[@]}" --kv-cache-dtype fp8 \
        --out "$OUT/fastpath_after_fp8_throughput.json" || echo "m4 fp8 FAILED"
    python3 benchmarks/latency_test.py --milestone m4 "${M[@]}" --input-len 128 --output-len 256 \
        --num-iters 3 --out "$OUT/fastpath_after_latency.json" || echo "m4 latency FAILED"
    python3 benchmarks/step_profile.py --milestone m4 "${M[@]}" --batch 256 --context 512 \
        --steps 20 --top 12 --out "$OUT/fastpath_after_step_profile.json" || echo "profile FAILED"
    python3 benchmarks/kv_fp8_accuracy.py --milestone m4 --out "$OUT/m4_kv_fp8_accuracy.json" \
        || echo "fp8 accuracy FAILED" ;;
  fast)  # issue 10: the m4 snapshot of the session's start (.snap/m4_*) vs m4 now, synchronous and
         # with async scheduling: the nano-vllm workload, batch-1 latency, a step timeline at 256.
    B=$(ls -d .snap/m4_* | head -n 1)
    L=(--input-len 128 --output-len 256 --num-iters 3)
    for v in "before:$B:" "sync:m4:--async-scheduling=off" "async:m4:--async-scheduling=on"; do
      IFS=: read -r name ms flag <<< "$v"
      python3 benchmarks/throughput_test.py --milestone "$ms" "${M[@]}" $flag \
          --out "$OUT/fast_${name}_throughput.json" 2>&1 | tail -n 8
      python3 benchmarks/latency_test.py --milestone "$ms" "${M[@]}" "${L[@]}" $flag \
          --out "$OUT/fast_${name}_latency.json" 2>&1 | tail -n 4
      python3 benchmarks/step_profile.py --milestone "$ms" "${M[@]}" --batch 256 --context 512 \
          --steps 20 --top 8 $flag --out "$OUT/fast_${name}_step_profile.json" 2>&1 \
          | grep -E "^m4|timeline|host ms" || echo "$name profile FAILED"
    done ;;
  final)  # issue 10's closing call: the m7 GPU set, greedy vs transformers, then in one call the
          # m4 snapshot of the session's start vs m4 and m7 now (async scheduling, the default on
          # CUDA), a batch-1 kernel profile, and transformers' continuous batching beside m7 on a
          # 64-request slice of the workload.
    (cd m7_gptq && PYTHONPATH=. python3 -m pytest tests -m gpu -q -p no:cacheprovider \
        > "$OUT/m7_gpu_tests.log" 2>&1; tail -n 3 "$OUT/m7_gpu_tests.log") || echo "m7 GPU tests FAILED"
    python3 benchmarks/gpu_check.py --milestone m7 --attention-backend triton --dtype float32 \
        || echo "gpu_check m7 float32: mismatch"
    B=$(ls -d .snap/m4_* | head -n 1)
    L=(--input-len 128 --output-len 256 --num-iters 3)
    for v in "before:$B" "m4:m4" "m7:m7"; do
      IFS=: read -r name ms <<< "$v"
      python3 benchmarks/throughput_test.py --milestone "$ms" "${M[@]}" \
          --out "$OUT/final_${name}_throughput.json" 2>&1 | grep -E "tok/s|floor" | head -n 3
      python3 benchmarks/latency_test.py --milestone "$ms" "${M[@]}" "${L[@]}" \
          --out "$OUT/final_${name}_latency.json" 2>&1 | tail -n 2 | head -n 1
    done
    python3 benchmarks/step_profile.py --milestone m7 "${M[@]}" --batch 1 --context 256 --steps 30 \
        --top 12 --kernels --out "$OUT/final_m7_kernels_b1.json" 2>&1 | grep -E "timeline|kernels:"
    python3 benchmarks/step_profile.py --milestone m7 "${M[@]}" --batch 256 --context 512 --steps 20 \
        --top 12 --out "$OUT/final_m7_step_profile.json" 2>&1 | grep -E "timeline|host ms"
    S=(--num-seqs 64)
    python3 benchmarks/throughput_test.py --milestone m7 "${M[@]}" "${S[@]}" \
        --out "$OUT/final_m7_64_throughput.json" 2>&1 | grep -E "tok/s" | head -n 1
    timeout 240 python3 benchmarks/peer_transformers.py "${M[@]}" "${S[@]}" \
        --out "$OUT/final_peer_64_throughput.json" 2>&1 | tail -n 4 || echo "peer FAILED" ;;
  peer)  # transformers' own continuous batching (paged SDPA, no flash-attn here) on the same
          # workload: the issue's peer baseline, in the same call as ours.
    timeout 420 python3 benchmarks/peer_transformers.py "${M[@]}" \
        --out "$OUT/peer_transformers_throughput.json" || echo "peer transformers FAILED" ;;
  s5check)  # session 5 (PDL, SiLU-mul inside the down GEMV): m7's whole GPU set, then greedy
             # tokens vs transformers in float32 and bfloat16.
    (cd m7_gptq && PYTHONPATH=. python3 -m pytest tests -m gpu -q -p no:cacheprovider \
        > "$OUT/s5_m7_gpu_tests.log" 2>&1; rc=$?; tail -n 6 "$OUT/s5_m7_gpu_tests.log"; exit $rc) \
        || echo "m7 GPU tests FAILED"
    for opt in "--dtype float32" "--dtype bfloat16"; do
      python3 benchmarks/gpu_check.py --milestone m7 --attention-backend triton $opt 2>&1 \
          | tail -n 2 || echo "gpu_check m7 $opt: mismatch beyond near-ties"
    done ;;
  s5lat)  # the m7 snapshot of the session's start (.snap/m7_*) vs m7 now with PDL off and on:
          # batch-1 latency, then batch-1 kernel profiles with PDL off and on.
    B=$(ls -d .snap/m7_* | head -n 1)
    L=(--input-len 128 --output-len 256 --num-iters 3)
    for v in "before:$B:1" "nopdl:m7:0" "pdl:m7:1"; do
      IFS=: read -r name ms pdl <<< "$v"
      FOLOVLLM_PDL=$pdl python3 benchmarks/latency_test.py --milestone "$ms" "${M[@]}" "${L[@]}" \
          --out "$OUT/s5_${name}_latency.json" 2>&1 | grep -E "^folovllm|floor"
    done
    for pdl in 0 1; do
      FOLOVLLM_PDL=$pdl python3 benchmarks/step_profile.py --milestone m7 "${M[@]}" --batch 1 \
          --context 256 --steps 30 --top 12 --kernels --out "$OUT/s5_pdl${pdl}_kernels_b1.json" \
          2>&1 | grep -E "timeline|kernels:" || echo "profile pdl=$pdl FAILED"
    done ;;
  s5tput)  # the nano-vllm workload: the snapshot vs m7 now with PDL off and on.
    B=$(ls -d .snap/m7_* | head -n 1)
    for v in "before:$B:1" "nopdl:m7:0" "pdl:m7:1"; do
      IFS=: read -r name ms pdl <<< "$v"
      FOLOVLLM_PDL=$pdl python3 benchmarks/throughput_test.py --milestone "$ms" "${M[@]}" \
          --out "$OUT/s5_${name}_throughput.json" 2>&1 | grep -E "tok/s|floor" | head -n 3
    done ;;
  s5b)  # session 5, second call: the kernel GPU tests of m7 (split-KV with the merge in-kernel,
        # GEMV, PDL), the GEMV vs cuBLAS (snapshot's kernel, then ours with a one-row sweep), then
        # snapshot vs m7 now: batch-1 latency, the nano-vllm workload, a batch-1 kernel profile.
    N=${NOW:-m7_gptq}  # m7 as committed (a snapshot under .snap/) or the working tree's
    (cd "$N" && PYTHONPATH=. python3 -m pytest tests/test_gpu.py tests/test_fused.py \
        tests/test_kernels.py tests/test_async.py -m gpu -q -p no:cacheprovider 2>&1 | tail -n 4) \
        || echo "m7 kernel GPU tests FAILED"
    B=$(ls -d .snap/m7_* | head -n 1)
    python3 benchmarks/gemv_bench.py --milestone "$B" --out "$OUT/s5_gemv_before.json" 2>&1 \
        | grep -E "M=1|copy" || echo "gemv before FAILED"
    python3 benchmarks/gemv_bench.py --milestone "$N" --sweep --out "$OUT/s5_gemv.json" 2>&1 \
        | grep -E "M=1|copy|SiLU" || echo "gemv FAILED"
    L=(--input-len 128 --output-len 256 --num-iters 3)
    for v in "before:$B" "m7:$N"; do
      IFS=: read -r name ms <<< "$v"
      python3 benchmarks/latency_test.py --milestone "$ms" "${M[@]}" "${L[@]}" \
          --out "$OUT/s5b_${name}_latency.json" 2>&1 | grep -E "^folovllm|floor"
      python3 benchmarks/throughput_test.py --milestone "$ms" "${M[@]}" \
          --out "$OUT/s5b_${name}_throughput.json" 2>&1 | grep -E "tok/s|floor" | head -n 2
    done
    python3 benchmarks/step_profile.py --milestone "$N" "${M[@]}" --batch 1 --context 256 --steps 30 \
        --top 12 --kernels --out "$OUT/s5b_m7_kernels_b1.json" 2>&1 | grep -E "timeline|kernels:" ;;
  s5c)  # session 5, third call: the in-kernel split-KV merge timed against the separate merge
        # kernel (.snap/m7v3 vs .snap/m7v2, both with PDL and the tuned GEMV) beside the session's
        # start (.snap/m7_*); the faster one then gets m7's whole GPU set, greedy vs transformers
        # and the nano-vllm workload beside the start.
    B=$(ls -d .snap/m7_* | head -n 1)
    L=(--input-len 128 --output-len 256 --num-iters 3)
    for v in "before:$B" "v2:.snap/m7v2" "v3:.snap/m7v3"; do
      IFS=: read -r name ms <<< "$v"
      python3 benchmarks/latency_test.py --milestone "$ms" "${M[@]}" "${L[@]}" \
          --out "$OUT/s5c_${name}_latency.json" 2>&1 | grep -E "^folovllm|floor"
    done
    W=$(python3 -c "import json, sys; t = {v: json.load(open(f'$OUT/s5c_{v}_latency.json'))['results']['folovllm']['tpot_s'] for v in ('v2', 'v3')}; print(min(t, key=t.get))")
    echo "faster: $W"
    (cd ".snap/m7$W" && PYTHONPATH=. python3 -m pytest tests -m gpu -q -p no:cacheprovider 2>&1 \
        | tail -n 3) || echo "m7 GPU tests FAILED"
    for opt in "--dtype float32" "--dtype bfloat16"; do
      python3 benchmarks/gpu_check.py --milestone ".snap/m7$W" --attention-backend triton $opt \
          2>&1 | tail -n 2 || echo "gpu_check $opt: mismatch beyond near-ties"
    done
    for v in "before:$B" "$W:.snap/m7$W"; do
      IFS=: read -r name ms <<< "$v"
      python3 benchmarks/throughput_test.py --milestone "$ms" "${M[@]}" \
          --out "$OUT/s5c_${name}_throughput.json" 2>&1 | grep -E "tok/s|floor" | head -n 2
    done ;;
  s5final)  # session 5's closing call, in order of need (m7 now: NOW=.snap/<copy of m7 as
             # committed>; s5c already ran its GPU set and batch-1 latency): the snapshot of the
             # session's start vs m7 now on the nano-vllm workload and the batch-256 timeline; the
             # issue's tuning sweep: max_num_batched_tokens 2048 / 16384 (default 8192), and
             # max_num_seqs 256 vs 512 on a 512-request workload. Each JSON goes into s5final.tar as
             # soon as it is written, so a call cut short still brings back what ran.
    N=${NOW:-m7_gptq}
    B=$(ls -d .snap/m7_* | head -n 1)
    keep() { [ -f "$OUT/$1" ] && tar rf "$OUT/s5final.tar" -C "$OUT" "$1" && rm "$OUT/$1"; }
    for v in "before:$B" "final:$N"; do
      IFS=: read -r name ms <<< "$v"
      timeout 120 python3 benchmarks/throughput_test.py --milestone "$ms" "${M[@]}" \
          --out "$OUT/s5f_${name}_throughput.json" 2>&1 | grep -E "tok/s|floor" | head -n 2
      keep "s5f_${name}_throughput.json"
      timeout 100 python3 benchmarks/step_profile.py --milestone "$ms" "${M[@]}" --batch 256 \
          --context 512 --steps 20 --top 8 --out "$OUT/s5f_${name}_step_profile.json" 2>&1 \
          | grep -E "timeline" || echo "$name profile FAILED"
      keep "s5f_${name}_step_profile.json"
    done
    for mnbt in 2048 16384; do
      timeout 120 python3 benchmarks/throughput_test.py --milestone "$N" "${M[@]}" \
          --max-num-batched-tokens $mnbt --out "$OUT/s5f_mnbt${mnbt}_throughput.json" 2>&1 \
          | grep -E "tok/s" | head -n 1
      keep "s5f_mnbt${mnbt}_throughput.json"
    done
    for mns in 256 512; do
      timeout 150 python3 benchmarks/throughput_test.py --milestone "$N" "${M[@]}" --num-seqs 512 \
          --batch-size $mns --out "$OUT/s5f_512req_mns${mns}_throughput.json" 2>&1 \
          | grep -E "tok/s" | head -n 1
      keep "s5f_512req_mns${mns}_throughput.json"
    done ;;
  before)  # the fast path's "before": an earlier snapshot of a milestone carried in .snap/NAME
    for snap in .snap/*; do
      python3 benchmarks/throughput_test.py --milestone "$snap" "${M[@]}" \
          --out "$OUT/before_$(basename "$snap")_throughput.json" || echo "$snap FAILED"
    done ;;
  esac
done
# The device returns at most 8 files: bundle everything when there are more.
if [ "$(ls "$OUT" | wc -l)" -gt 8 ]; then
  (cd "$OUT" && tar czf bundle.tgz --remove-files ./*.json ./*.png ./*.log 2>/dev/null; ls)
fi
