#!/bin/bash
# One-shot GPU verification on the lent GPU machine (see tools/device/fetch_debs.sh): a build
# against the machine's torch (tools/device/build.sh), the CUDA unit tests, then CPU-vs-CUDA
# end-to-end checks and GPU timings. Logs land in $OUT.
source tools/device/build.sh
L=bd/llmctl
timeout 120 bd/tests/llmctl_tests --gtest_filter='*Cuda*' > $OUT/gtest_cuda.log 2>&1; echo "gtest cuda rc=$?"; grep -E "OK|FAILED|SKIPPED|PASSED" $OUT/gtest_cuda.log | head
{
set -x
timeout 60 $L train-tokenizer --data dataset/demo/train.jsonl --out /tmp/tok --vocab-size 2000 --json | tail -3
timeout 30 $L init --preset minimind2-small --tokenizer /tmp/tok --out /tmp/m --seed 1 >/dev/null
IDS=$(python3 -c "import random; random.seed(0); print(','.join(str(random.randrange(2000)) for _ in range(64)))")
for d in cpu cuda; do timeout 60 $L eval --model /tmp/m --ids $IDS --device $d --json > /tmp/ev_$d.json; done
python3 -c "
import json; a=json.load(open('/tmp/ev_cpu.json'))['logprobs'][1:]; b=json.load(open('/tmp/ev_cuda.json'))['logprobs'][1:]
print('eval cpu vs cuda max |dlogprob|', max(abs(x-y) for x,y in zip(a,b)))"
for d in cpu cuda; do timeout 60 $L chat --model /tmp/m --prompt 'hello there' --max-new-tokens 32 --ignore-eos --temperature 0 --device $d --json | python3 -c "import json,sys; print('$d', json.load(sys.stdin)['output_token_ids'])"; done
timeout 60 $L chat --model /tmp/m --prompt 'hello there' --max-new-tokens 32 --ignore-eos --temperature 0 --device cuda --kv-dtype int8 --json | python3 -c "import json,sys; print('cuda int8kv', json.load(sys.stdin)['output_token_ids'])"
timeout 90 $L bench --model /tmp/m --device cuda --dtype bf16 --repetitions 3 --num-requests 64 --min-input 32 --max-input 32 --min-output 256 --max-output 256 --max-num-seqs 64
timeout 60 $L bench --model /tmp/m --device cuda --dtype f32 --repetitions 3 --skip-throughput
timeout 60 $L quantize --model /tmp/m --out /tmp/m4 --method rtn --json | tail -2
for d in cpu cuda; do timeout 60 $L eval --model /tmp/m4 --ids $IDS --device $d --json > /tmp/e4_$d.json; done
timeout 60 $L chat --model /tmp/m4 --prompt 'hello there' --max-new-tokens 32 --ignore-eos --temperature 0 --device cuda --json | python3 -c "import json,sys; print('awq cuda', json.load(sys.stdin)['output_token_ids'])"
timeout 60 $L chat --model /tmp/m4 --prompt 'hello there' --max-new-tokens 32 --ignore-eos --temperature 0 --device cpu --json | python3 -c "import json,sys; print('awq cpu ', json.load(sys.stdin)['output_token_ids'])"
timeout 90 $L bench --model /tmp/m4 --device cuda --dtype f16 --repetitions 3 --skip-throughput
timeout 120 $L pretrain --data dataset/demo/train.jsonl --preset minimind2-small --tokenizer /tmp/tok --out /tmp/pt --device cuda --dtype bf16 --max-steps 40 --batch-size 16 --seq-len 512 --lr 5e-4 --json 2>&1 | tail -4
} > $OUT/e2e.log 2>&1
tail -c 6000 $OUT/e2e.log
# The plain-PyTorch training reference on the same GPU and shapes (docs/benchmarks.md "GPU").
python3 tools/bench/train_reference.py --device cuda --batch-size 16 --seq-len 512 --steps 40 --warmup 3 --dtype bf16 2>&1 \
  | python3 -c "import json,sys; print('pytorch reference tokens/s', json.loads(sys.stdin.read().strip().splitlines()[-1])['tokens_per_s'])"
