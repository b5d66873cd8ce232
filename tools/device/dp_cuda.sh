#!/bin/bash
# Data-parallel training on CUDA (two processes sharing the lent GPU, gradients summed by
# c10d's Gloo group through host memory) against one process with the same global batch.
# carry [".devdeps", "runs/demo/tokenizer"].
source tools/device/build.sh
L=bd/llmctl
C="--data dataset/demo/train.jsonl --tokenizer runs/demo/tokenizer --preset nano --max-steps 6 --seq-len 64 --dtype f32 --device cuda --lr 3e-3 --threads 2"
timeout 120 $L pretrain $C --out /tmp/n1 --batch-size 4 > $OUT/dp_n1.log 2>&1 || { tail -5 $OUT/dp_n1.log; exit 1; }
timeout 120 $L pretrain $C --out /tmp/n2 --batch-size 2 --nproc 2 > $OUT/dp_n2.log 2>&1 || { tail -5 $OUT/dp_n2.log; exit 1; }
python3 - <<'PY'
import json
a = [json.loads(l) for l in open("/tmp/n1/metrics.jsonl")]
b = [json.loads(l) for l in open("/tmp/n2/metrics.jsonl")]
for x, y in zip(a, b):
    print("step %d  loss 1 proc %.6f  2 procs %.6f  |diff| %.2e  grad_norm %.5f / %.5f" %
          (x["step"], x["loss"], y["loss"], abs(x["loss"] - y["loss"]), x["grad_norm"], y["grad_norm"]))
print("world_size", json.load(open("/tmp/n2/train_config.json"))["world_size"])
PY
