#!/bin/bash
# AWQ vs RTN quality on a model trained long enough to matter, on the lent GPU machine:
# pretrains minimind2-small on the demo corpus (3 epochs, bf16), quantizes it with RTN and
# AWQ at group 128 and 64, and compares held-out perplexity; then free-running greedy
# agreement of int8 / int4 KV with fp KV. Run with carry [".devdeps", "runs/demo/tokenizer"].
# Results: docs/quantize.md "Quality".
source tools/device/build.sh
L=bd/llmctl; H=dataset/demo/heldout.jsonl; M=/tmp/pt/final
set -o pipefail
T0=$(date +%s)
timeout 240 $L pretrain --data dataset/demo/train.jsonl --preset minimind2-small --tokenizer runs/demo/tokenizer \
  --out /tmp/pt --device cuda --dtype bf16 --epochs 3 --batch-size 16 --seq-len 512 --lr 1e-3 --warmup-steps 100 \
  --json > $OUT/pretrain.json 2> $OUT/pretrain.log || { tail -5 $OUT/pretrain.log; exit 1; }
echo "pretrain $(( $(date +%s) - T0 )) s: $(python3 -c "import json; d=json.load(open('$OUT/pretrain.json')); print({k: d[k] for k in d if 'loss' in k or 'step' in k or 'tokens' in k})")"
ppl() { timeout 60 $L eval --model $1 --data $H --device cuda --json | python3 -c "import json,sys; print('%.3f' % json.load(sys.stdin)['perplexity'])"; }
echo "fp32 ppl $(ppl $M)"
for g in 128 64; do for m in rtn awq; do
  T0=$(date +%s)
  timeout 150 $L quantize --model $M --out /tmp/q_${m}_$g --method $m --group-size $g --device cuda --json > $OUT/q_${m}_$g.json 2>/dev/null \
    || { echo "quantize $m $g failed"; continue; }
  echo "$m g$g ppl $(ppl /tmp/q_${m}_$g) ($(( $(date +%s) - T0 )) s)"
done; done
# KV cache quantization: free-running greedy continuations of 16 held-out openings.
python3 -c "
import json
for i, l in enumerate(open('$H')):
    if i >= 16: break
    print(json.loads(l)['text'][:60].replace('\n', ' '))" > /tmp/prompts.txt
for kv in auto int8 int4; do
  timeout 90 $L chat --model $M --raw --json --temperature 0 --max-new-tokens 64 --ignore-eos --device cuda --kv-dtype $kv \
    < /tmp/prompts.txt > /tmp/kv_$kv.jsonl
done
python3 -c "
import json
ref = [json.loads(l)['output_token_ids'] for l in open('/tmp/kv_auto.jsonl')]
for kv in ('int8', 'int4'):
    got = [json.loads(l)['output_token_ids'] for l in open('/tmp/kv_%s.jsonl' % kv)]
    same = sum(a == b for r, g in zip(ref, got) for a, b in zip(r, g)); n = sum(len(r) for r in ref)
    prefix = sum(next((i for i, (a, b) in enumerate(zip(r, g)) if a != b), len(r)) for r, g in zip(ref, got))
    print('kv %s: %d prompts, same token at %d/%d positions (%.1f%%), identical prefix %d/%d tokens' % (kv, len(got), same, n, 100.0 * same / n, prefix, n))"
cp /tmp/q_awq_128/config.json $OUT/awq_config.json 2>/dev/null
