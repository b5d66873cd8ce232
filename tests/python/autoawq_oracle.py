"""AutoAWQ itself as an oracle for llmctl's AWQ directories (run by test_quantize.py).

Runs with the AutoAWQ 0.2.9 stack that tools/install-deps.sh puts in .venv/autoawq
(transformers 4.51 and its hub/tokenizers, ahead of the venv's own on PYTHONPATH), on the
venv's torch, on the CPU:

    PYTHONPATH=.venv/autoawq .venv/bin/python tests/python/autoawq_oracle.py DIR 1,5,9,13

1. AutoAWQForCausalLM.from_quantized(DIR) loads the directory (WQLinear_GEMM modules) and
   runs the token ids: prints each position's log-softmax of the next id and the argmax.
2. For every quantized linear of the first layer, AutoAWQ's own WQLinear_GEMM.from_linear
   re-packs the weights it dequantized (with the scales and zero points it unpacked), and
   the result is compared bit for bit with the qweight / qzeros llmctl wrote.

Three switches make AutoAWQ run where it was not written to: `datasets` (imported for
calibration, unused when loading) is a stub; its device probe answers something other than
"cpu" (which would demand Intel's IPEX) so the plain WQLinear_GEMM is used; and Triton,
which torch's wheel brings but whose kernels need a GPU, is switched off so WQLinear_GEMM
takes its own dequantize-then-matmul path in fp16.
"""
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

awq.models.base.get_best_device = lambda: "cpu (plain torch)"
awq_gemm.get_best_device = lambda: "cpu"
awq_gemm.TRITON_AVAILABLE = False


def main():
    path, ids = sys.argv[1], [int(x) for x in sys.argv[2].split(",")]
    model = AutoAWQForCausalLM.from_quantized(path, fuse_layers=False, device_map={"": "cpu"})
    with torch.no_grad():
        logits = model.model(input_ids=torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, -1)
    res = {"logprobs": [None] + [lp[i - 1, ids[i]].item() for i in range(1, len(ids))],
           "argmax": lp.argmax(-1).tolist(), "repacked": {}}

    layer = model.model.model.layers[0]
    for name, mod in layer.named_modules():
        if not isinstance(mod, awq_gemm.WQLinear_GEMM):
            continue
        g = mod.group_size
        iw, iz = unpack_awq(mod.qweight, mod.qzeros, 4)
        iw, iz = reverse_awq_order(iw, iz, 4)
        iw, iz = iw & 15, iz & 15                                   # [in, out], [in/g, out]
        s = mod.scales.float()                                      # [in/g, out]
        w = (iw.float() - iz.float().repeat_interleave(g, 0)) * s.repeat_interleave(g, 0)
        lin = torch.nn.Linear(mod.in_features, mod.out_features, bias=False)
        lin.weight.data = w.t().contiguous()
        again = awq_gemm.WQLinear_GEMM.from_linear(lin, 4, g, scales=mod.scales, zeros=iz.to(torch.int32))
        res["repacked"][name] = bool(torch.equal(again.qweight, mod.qweight) and torch.equal(again.qzeros, mod.qzeros))
    print(json.dumps(res))


if __name__ == "__main__":
    main()
