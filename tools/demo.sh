#!/usr/bin/env bash
# The demo on the shipped data (run by `make demo`): train a tokenizer on the demo corpus,
# create a nano model, save it, and measure its perplexity on held-out text.
set -euo pipefail
cd "$(dirname "$0")/.."
LLMCTL=${LLMCTL:-build/llmctl}
OUT=${OUT:-runs/demo}
mkdir -p "$OUT"

echo "== 1/3 train a tokenizer on dataset/demo/train.jsonl"
"$LLMCTL" train-tokenizer --data dataset/demo/train.jsonl --out "$OUT/tokenizer" --vocab-size 6400

echo "== 2/3 create a nano model"
"$LLMCTL" init --preset nano --tokenizer "$OUT/tokenizer" --out "$OUT/nano" --seed 42

echo "== 3/3 perplexity on held-out text (an untrained model scores about its vocabulary size)"
"$LLMCTL" eval --model "$OUT/nano" --data dataset/demo/heldout.jsonl --seq-len 256

echo "== done: model directory $OUT/nano (HF layout); try:"
echo "   $LLMCTL tokenize --tokenizer $OUT/nano --text 'In the beginning' --json"
