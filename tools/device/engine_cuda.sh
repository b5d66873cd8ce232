#!/bin/bash
# The engine on the lent GPU machine (carry [".devdeps", "runs/demo/tokenizer"]; DTYPES="" skips the 64-sequence runs; first,
# here: tools/device/fetch_debs.sh): the CUDA unit tests (paged attention over fp and
# int8/int4 caches, the engine's greedy batch, RMSNorm, int4 GEMV), then `llmctl bench` of
# a minimind2-small (random weights): batch-1 pp512/tg128 and 64 concurrent sequences in f32
# and bf16, and the KV dtypes at one fixed KV budget. Results: docs/benchmarks.md "GPU".
source tools/device/build.sh
L=bd/llmctl
# The engine test last and alone: a crash there (stack printed by tests/unit/test_main.cpp,
# its own frames turned into source lines) does not hide the kernel tests.
for f in '*Cuda*:-EngineCuda*' 'EngineCuda*'; do
  timeout 240 bd/tests/llmctl_tests --gtest_filter="$f" > /tmp/gtest.log 2>&1; echo "gtest $f rc=$?"
  grep -E "^\[ +(OK|FAILED|SKIPPED|PASSED) " /tmp/gtest.log | head -30; grep -B2 -A6 Failure /tmp/gtest.log | head -40
  grep -A10 "fatal signal" /tmp/gtest.log | cut -c1-200
  grep -A40 "fatal signal" /tmp/gtest.log | grep -o "llmctl_tests(+0x[0-9a-f]*)" | sed 's/.*(+\(0x[0-9a-f]*\))/\1/' \
    | xargs -r addr2line -f -C -e bd/tests/llmctl_tests | paste - - | cut -c1-250 | head -20
done
timeout 30 $L init --preset minimind2-small --tokenizer runs/demo/tokenizer --out /tmp/m --seed 1 > /dev/null
# Greedy on CUDA == CPU through small blocks and chunked prefill (three prompts in one batch).
printf 'hello there\nonce upon a time in a land far away there lived\n1 2 3\n' > /tmp/prompts.txt
for d in cpu cuda; do
  timeout 60 $L chat --model /tmp/m --raw --json --temperature 0 --max-new-tokens 24 --ignore-eos --device $d --block-size 4 \
    --max-num-batched-tokens 16 < /tmp/prompts.txt | python3 -c "import json,sys; print([json.loads(l)['output_token_ids'] for l in sys.stdin])" > /tmp/greedy_$d.txt
done
cmp -s /tmp/greedy_cpu.txt /tmp/greedy_cuda.txt && echo "chat greedy cuda == cpu (block 4, chunked prefill)" || { echo "chat greedy differs:"; cat /tmp/greedy_*.txt; }
summary() { python3 -c "
import json,sys; r=json.load(sys.stdin); t=r['throughput']; lat=r.get('tg') and 'pp %.0f tg %.0f tok/s, ' % (r['pp']['tokens_per_s'], r['tg']['tokens_per_s']) or ''
print('$1: %s%d requests: %.0f output tok/s, TPOT median %.2f ms, TTFT median %.1f ms, preemptions %d, vs batch-1 %s'
      % (lat, t['requests'], t['output_tokens_per_s'], 1e3 * t['tpot_s']['median'], 1e3 * t['ttft_s']['median'], t['preemptions'], t.get('vs_batch1_decode') and '%.1fx' % t['vs_batch1_decode'] or '-'))"; }
for dt in ${DTYPES-f32 bf16}; do
  timeout 150 $L bench --model /tmp/m --device cuda --dtype $dt --repetitions 3 --num-requests 64 --min-input 32 --max-input 32 \
    --min-output 256 --max-output 256 --max-num-seqs 64 --json 2> /tmp/bench_$dt.log | tee $OUT/bench_$dt.json | summary "$dt 64 seqs"
done
# Per-step cost of the KV dtypes without memory pressure (1 GiB, 64 sequences).
for kv in auto int8 int4; do
  timeout 120 $L bench --model /tmp/m --device cuda --dtype bf16 --skip-latency --num-requests 64 --min-input 128 --max-input 128 \
    --min-output 384 --max-output 384 --max-num-seqs 64 --kv-cache-gb 1 --kv-dtype $kv --json 2> /tmp/kvfree_$kv.log \
    | summary "bf16 KV $kv, 1 GiB, 64 seqs"
done
# The same KV memory (64 MiB) for 256 requests of 128 + 384 tokens: bf16 holds 32 such sequences, int8 56, int4 102.
# Run with as many as fit (no preemption), and with up to 256 admitted (preemption by recompute).
for kv in auto:31 int8:55 int4:100 auto:256 int8:256 int4:256; do
  timeout 150 $L bench --model /tmp/m --device cuda --dtype bf16 --skip-latency --num-requests 256 --min-input 128 --max-input 128 \
    --min-output 384 --max-output 384 --max-num-seqs ${kv#*:} --kv-cache-gb 0.0625 --kv-dtype ${kv%:*} --json 2> /tmp/kv.log \
    | summary "bf16 KV ${kv%:*}, 64 MiB, max-num-seqs ${kv#*:}"
done
