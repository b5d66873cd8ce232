#!/bin/bash
# The engine on the lent GPU machine (carry [".devdeps", "runs/demo/tokenizer"]; first,
# here: tools/device/fetch_debs.sh): the CUDA unit tests (paged attention over fp and
# int8/int4 caches, the engine's greedy batch, RMSNorm, int4 GEMV), then `llmctl bench` of
# a minimind2-small (random weights): batch-1 pp512/tg128 and 64 concurrent sequences in f32
# and bf16, and the KV dtypes at one fixed KV budget. Results: docs/benchmarks.md "GPU".
source tools/device/build.sh
L=bd/llmctl
timeout 240 bd/tests/llmctl_tests --gtest_filter='*Cuda*' > $OUT/gtest_cuda.log 2>&1; echo "gtest cuda rc=$?"
grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) " $OUT/gtest_cuda.log | head -20; grep -B2 -A6 Failure $OUT/gtest_cuda.log | head -40
timeout 30 $L init --preset minimind2-small --tokenizer runs/demo/tokenizer --out /tmp/m --seed 1 > /dev/null
summary() { python3 -c "
import json,sys; r=json.load(sys.stdin); t=r['throughput']; lat=r.get('tg') and 'pp %.0f tg %.0f tok/s, ' % (r['pp']['tokens_per_s'], r['tg']['tokens_per_s']) or ''
print('$1: %s%d requests: %.0f output tok/s, TPOT median %.2f ms, TTFT median %.1f ms, preemptions %d, vs batch-1 %s'
      % (lat, t['requests'], t['output_tokens_per_s'], 1e3 * t['tpot_s']['median'], 1e3 * t['ttft_s']['median'], t['preemptions'], t.get('vs_batch1_decode') and '%.1fx' % t['vs_batch1_decode'] or '-'))"; }
for dt in f32 bf16; do
  timeout 150 $L bench --model /tmp/m --device cuda --dtype $dt --repetitions 3 --num-requests 64 --min-input 32 --max-input 32 \
    --min-output 256 --max-output 256 --max-num-seqs 64 --json 2> $OUT/bench_$dt.log | tee $OUT/bench_$dt.json | summary "$dt 64 seqs"
done
# Same KV memory (64 MiB), 256 requests of 128 + 384 tokens, up to 256 running: how many fit decides throughput.
for kv in auto int8 int4; do
  timeout 150 $L bench --model /tmp/m --device cuda --dtype bf16 --skip-latency --num-requests 256 --min-input 128 --max-input 128 \
    --min-output 384 --max-output 384 --max-num-seqs 256 --kv-cache-gb 0.0625 --kv-dtype $kv --json 2> $OUT/kv_$kv.log \
    | tee $OUT/kv_$kv.json | summary "bf16 KV $kv, 64 MiB"
done
