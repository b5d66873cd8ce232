#!/bin/bash
# AWQ vs RTN on an imported model (trained by HF transformers, not llmctl), on the lent GPU
# machine; carry [".devdeps", "runs/demo/tokenizer"]. Results: docs/quantize.md "Quality".
# Extra arguments go to hf_import_quality.py (e.g. --preset minimind2 --steps 620 --lr 1e-3).
source tools/device/build.sh
L=bd/llmctl; H=dataset/demo/heldout.jsonl; M=/tmp/hf
PYTHONUNBUFFERED=1 timeout 200 python3 tools/device/hf_import_quality.py --out $M --device cuda --seconds ${SECONDS_BUDGET:-100} "$@" \
  2>&1 | grep -v Writing || exit 1
ppl() { timeout 60 $L eval --model $1 --data $H --device cuda --json 2>/dev/null | python3 -c "import json,sys; print('%.3f' % json.load(sys.stdin)['perplexity'])"; }
echo "imported fp32 ppl $(ppl $M)"
for m in rtn awq; do
  timeout 120 $L quantize --model $M --out /tmp/q_$m --method $m --device cuda --json >/dev/null 2>$OUT/q_$m.log || { tail -3 $OUT/q_$m.log; continue; }
  echo "imported $m g128 ppl $(ppl /tmp/q_$m)"
done
