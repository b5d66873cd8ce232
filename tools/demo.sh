#!/usr/bin/env bash
# The demo on the shipped data (run by `make demo`): the whole seed pipeline on 2 CPU cores
# in about 10 minutes.
#   1. train a tokenizer on the demo corpus (KJV Bible + Chinese poetry and fortunes)
#   2. pretrain the nano preset on it (and show the held-out perplexity it reaches)
#   3. SFT it on two-digit addition written as conversations
#   4. answer 200 held-out sums it never saw, greedily, and print the exact-match score
#   5. one chat answer through the inference engine (llmctl chat)
set -euo pipefail
cd "$(dirname "$0")/.."
LLMCTL=${LLMCTL:-build/llmctl}
OUT=${OUT:-runs/demo}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-150}
SFT_STEPS=${SFT_STEPS:-600}
mkdir -p "$OUT"
start=$(date +%s)
elapsed() { echo "   ($(( $(date +%s) - start ))s since the start)"; }

echo "== 1/5 train a tokenizer on dataset/demo/train.jsonl"
"$LLMCTL" train-tokenizer --data dataset/demo/train.jsonl --out "$OUT/tokenizer" --vocab-size 6400
elapsed

echo "== 2/5 pretrain nano ($PRETRAIN_STEPS steps of 16 x 256 tokens)"
"$LLMCTL" pretrain --data dataset/demo/train.jsonl --tokenizer "$OUT/tokenizer" --preset nano \
  --out "$OUT/pretrain" --seq-len 256 --batch-size 16 --max-steps "$PRETRAIN_STEPS" \
  --lr 2e-3 --warmup-steps 20 --eval-data dataset/demo/heldout.jsonl --eval-every 50 --eval-batches 4
echo "   held-out perplexity after pretraining (an untrained model scores about 6400):"
"$LLMCTL" eval --model "$OUT/pretrain/final" --data dataset/demo/heldout.jsonl --seq-len 256 --max-tokens 16384
elapsed

echo "== 3/5 sft on two-digit addition ($SFT_STEPS steps of 64 conversations)"
"$LLMCTL" sft --data dataset/demo/sft_train.jsonl --model "$OUT/pretrain/final" --out "$OUT/sft" \
  --seq-len 96 --batch-size 64 --max-steps "$SFT_STEPS" --lr 3e-3 --warmup-steps 30 --weight-decay 0
elapsed

echo "== 4/5 held-out sums the model never saw (greedy answers, exact match)"
"$LLMCTL" eval --model "$OUT/sft/final" --exact-match dataset/demo/sft_heldout.jsonl --show 3
elapsed

echo "== 5/5 one chat answer: llmctl chat --prompt 'What is 47 + 38?'"
"$LLMCTL" chat --model "$OUT/sft/final" --prompt "What is 47 + 38?" --temperature 0 --max-new-tokens 48
elapsed

echo "== done. Run directories: $OUT/pretrain, $OUT/sft (metrics.jsonl, loss_curve.svg, final/ in HF layout)"
echo "   chat with it yourself:  $LLMCTL chat --model $OUT/sft/final"
