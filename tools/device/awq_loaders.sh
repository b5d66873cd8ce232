#!/bin/bash
# Do other tools read what `llmctl quantize` writes? On the lent GPU machine (carry
# [".devdeps", "runs/demo/sft/final"]; first, here: tools/device/fetch_debs.sh and
# tools/device/fetch_awq_oracles.sh): llmctl quantizes the demo SFT model (AWQ, group 64),
# then transformers 4.51 (AutoModelForCausalLM, its own AWQ integration) and AutoAWQ 0.2.9
# (AutoAWQForCausalLM.from_quantized) load the directory on the GPU — WQLinear_GEMM modules
# running AutoAWQ's Triton int4 kernels — and score llmctl's own greedy continuation; their
# log-probs and argmax tokens are compared with llmctl's (CPU and CUDA).
# Results: docs/quantize.md, "The format" (checked against AutoAWQ, transformers).
source tools/device/build.sh
L=bd/llmctl; M=/tmp/awq_demo; P=/tmp/awq_py
mkdir -p $P
for w in .devdeps/wheels/*.whl; do python3 -m zipfile -e $w $P; done
tar -xzf .devdeps/wheels/autoawq.tar.gz -C $P
timeout 120 $L quantize --model runs/demo/sft/final --out $M --method awq --group-size 64 --json > /tmp/quantize.json 2>&1 \
  || { tail -5 /tmp/quantize.json; exit 1; }
python3 -c "import json; print('quantization_config', json.load(open('$M/config.json'))['quantization_config'])"
# The token ids: a question in the chat template and llmctl's greedy answer to it.
IDS=$(timeout 60 $L chat --model $M --prompt "What is 23 + 45?" --max-new-tokens 40 --temperature 0 \
  --json | python3 -c "import json,sys; r=json.load(sys.stdin); print(','.join(map(str, r['prompt_token_ids'] + r['output_token_ids'])))")
for d in cpu cuda; do timeout 60 $L eval --model $M --ids $IDS --device $d --json > /tmp/llmctl_$d.json; done
for loader in transformers autoawq; do
  PYTHONPATH=$P HF_HUB_OFFLINE=1 timeout 240 python3 tests/python/autoawq_oracle.py $M $IDS --loader $loader --device cuda \
    > /tmp/$loader.json 2> /tmp/$loader.log || { echo "$loader failed:"; grep -v -i -e warn -e "^ " /tmp/$loader.log | tail -8; }
done
python3 - <<'PY'
import json
ours = {d: json.load(open("/tmp/llmctl_%s.json" % d)) for d in ("cpu", "cuda")}
print("llmctl cpu vs cuda: max |dlogprob| %.2e" % max(abs(a - b) for a, b in zip(ours["cpu"]["logprobs"][1:], ours["cuda"]["logprobs"][1:])))
for loader in ("transformers", "autoawq"):
    try:
        t = json.loads(open("/tmp/%s.json" % loader).read().strip().splitlines()[-1])
    except Exception as e:
        print(loader, "no result:", e); continue
    lp = t["logprobs"][1:]; ref = ours["cpu"]["logprobs"][1:]
    same = sum(a == b for a, b in zip(t["argmax"], ours["cpu"]["argmax"]))
    print("%s on cuda (%s): %d tokens, argmax equal at %d/%d, max |dlogprob| %.2e, mean %.2e, repacked bit-exact %s"
          % (loader, ",".join(t["linear_modules"]), len(lp) + 1, same, len(t["argmax"]),
             max(abs(a - b) for a, b in zip(lp, ref)), sum(abs(a - b) for a, b in zip(lp, ref)) / len(lp),
             all(t["repacked"].values()) and len(t["repacked"]) == 7))
PY
