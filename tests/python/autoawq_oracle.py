"""AutoAWQ itself as an oracle for llmctl's AWQ directories (run by test_quantize.py).

Runs with the AutoAWQ 0.2.9 stack that tools/install-deps.sh puts in .venv/autoawq
(transformers 4.51 and its hub/tokenizers, ahead of the venv's own on PYTHONPATH), on the
venv's torch, on the CPU:

    PYTHONPATH=.venv/autoawq .venv/bin/python tests/python/autoawq_oracle.py DIR 1,5,9,13
        [--loader autoawq|transformers] [--device cpu|cuda]

1. The directory is loaded into AutoAWQ's WQLinear_GEMM modules, by
   AutoAWQForCausalLM.from_quantized (--loader autoawq, the default) or by transformers'
   own AWQ integration, AutoModelForCausalLM.from_pretrained (--loader transformers, which
   transformers 4.x allows only on a GPU), and runs the token ids: prints each position's
   log-softmax of the next id and the argmax.
2. For every quantized linear of the first layer, AutoAWQ's own WQLinear_GEMM.from_linear
   re-packs the weights it dequantized (with the scales and zero points it unpacked), and
   the result is compared bit for bit with the qweight / qzeros llmctl wrote.

`datasets` (imported by AutoAWQ for calibration, unused when loading) is a stub. On the
CPU two more switches make AutoAWQ run where it was not written to: its device probe
answers something other than "cpu" (which would demand Intel's IPEX) so the plain
WQLinear_GEMM is used, and Triton, which torch's wheel brings but whose kernels need a
GPU, is switched off so WQLinear_GEMM takes its own dequantize-then-matmul path in fp16.
On a GPU nothing is switched: WQLinear_GEMM runs AutoAWQ's Triton w4a16 kernels.
"""
import argparse
import importlib.machinery
import json
import sys
import types
import warnings

warnings.filterwarnings("ignore")
stub = types.ModuleType("datasets")
stub.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
stub.load_dataset = None
sys.modules["datasets"] = stub

import torch  # noqa: E402
import awq.models.base  # noqa: E402
import awq.modules.linear.gemm as awq_gemm  # noqa: E402
from awq import AutoAWQForCausalLM  # noqa: E402
from awq.utils.packing_utils import reverse_awq_order, unpack_awq  # noqa: E402



def load(path, loader, device):
    if loader == "autoawq":
        return AutoAWQForCausalLM.from_quantized(path, fuse_layers=False, device_map={"": device}).model
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float16, device_map={"": device})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("ids")
    ap.add_argument("--loader", choices=("autoawq", "transformers"), default="autoawq")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    ids = [int(x) for x in args.ids.split(",")]
    if args.device == "cpu":
        awq.models.base.get_best_device = lambda: "cpu (plain torch)"
        awq_gemm.get_best_device = lambda: "cpu"
        awq_gemm.TRITON_AVAILABLE = False
    model = load(args.dir, args.loader, args.device)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids], device=args.device)).logits[0].double().cpu()
    lp = torch.log_softmax(logits, -1)
    layer = model.model.layers[0]
    kinds = sorted({type(m).__module__ + "." + type(m).__name__ for m in layer.modules()
                    if "Linear" in type(m).__name__})
    res = {"logprobs": [None] + [lp[i - 1, ids[i]].item() for i in range(1, len(ids))],
           "argmax": lp.argmax(-1).tolist(), "linear_modules": kinds, "repacked": {}}

    for name, mod in layer.named_modules():
        if not isinstance(mod, awq_gemm.WQLinear_GEMM):
            continue
        g = mod.group_size
        qweight, qzeros, scales = mod.qweight.cpu(), mod.qzeros.cpu(), mod.scales.cpu()
        iw, iz = unpack_awq(qweight, qzeros, 4)
        iw, iz = reverse_awq_order(iw, iz, 4)
        iw, iz = iw & 15, iz & 15                                   # [in, out], [in/g, out]
        s = scales.float()                                          # [in/g, out]
        w = (iw.float() - iz.float().repeat_interleave(g, 0)) * s.repeat_interleave(g, 0)
        lin = torch.nn.Linear(mod.in_features, mod.out_features, bias=False)
        lin.weight.data = w.t().contiguous()
        again = awq_gemm.WQLinear_GEMM.from_linear(lin, 4, g, scales=scales, zeros=iz.to(torch.int32))
        res["repacked"][name] = bool(torch.equal(again.qweight.cpu(), qweight) and torch.equal(again.qzeros.cpu(), qzeros))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
