#!/bin/bash
# Training throughput on the lent GPU machine, llmctl against the plain-PyTorch reference in
# the same run (tools/bench/train_throughput.py), plus the fused CPU attention kernel's
# tests and timing on that machine's CPU. Run with the device tool, carry [".devdeps"]:
#   bash tools/device/train_compare.sh
source tools/device/build.sh
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2) | $(grep -o 'avx512_bf16\|amx_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
timeout 120 bd/tests/llmctl_tests --gtest_filter='CausalAttentionCpu.*:*Cuda*' 2>&1 | grep -E "^\[  (PASSED|FAILED|SKIPPED) |tests ran"
LLMCTL_BENCH_ATTENTION=1 timeout 120 bd/tests/llmctl_tests --gtest_filter=CausalAttentionCpu.Benchmark 2>&1 | grep -E "forward"
for bs in 16 64; do
  timeout 240 python3 tools/bench/train_throughput.py --bin bd/llmctl --device cuda --dtype bf16 \
    --batch-size $bs --steps 30 --repeats 2 --json > $OUT/train_cuda_bs$bs.json 2> $OUT/train_cuda_bs$bs.err
  echo "batch $bs x 512: $(cat $OUT/train_cuda_bs$bs.json)"; tail -3 $OUT/train_cuda_bs$bs.err
done
