#include "llmctl/engine/model_runner.h"

#include <ATen/Parallel.h>

#include "llmctl/kernels/linear.h"
#include "llmctl/kernels/paged_attention.h"
#include "llmctl/kernels/rmsnorm.h"
#include "llmctl/kernels/rope.h"
#include "llmctl/kernels/swiglu.h"
#include "llmctl/util/error.h"

namespace llmctl {

namespace {

torch::Tensor param(const torch::nn::Module& m, const std::string& name) {
  auto p = m.named_parameters().find(name);
  return p ? *p : torch::Tensor();
}

torch::Tensor cat_or_undef(std::vector<torch::Tensor> parts) {
  for (auto& p : parts)
    if (!p.defined()) return {};
  return torch::cat(parts, 0);
}

AwqTensor awq_to(const AwqTensor& t, const torch::Device& device) {
  return {t.qweight.to(device), t.qzeros.to(device), t.scales.to(device), t.group_size};
}

}  // namespace

std::int64_t ModelRunner::block_bytes(const ModelConfig& cfg, int block_size, torch::ScalarType dtype, int kv_bits) {
  return 2 * cfg.num_hidden_layers *
         kernels::kv_cache_block_bytes(cfg.num_key_value_heads, block_size, cfg.head_dim, dtype, kv_bits);
}

ModelRunner::ModelRunner(CausalLM& model, torch::ScalarType dtype, int num_blocks, int block_size,
                         int max_model_len, const AwqLinears* awq, int kv_bits)
    : cfg_(model->config()), block_size_(block_size) {
  torch::NoGradGuard no_grad;
  auto conv = [&](const torch::Tensor& t) { return t.defined() ? t.detach().to(dtype).contiguous() : t; };
  embed_ = conv(model->model->embed_tokens->weight);
  final_norm_ = conv(model->model->norm->weight);
  lm_head_ = kernels::PackedLinear(model->lm_head ? conv(model->lm_head->weight) : embed_, {});
  const auto opts = embed_.options();
  for (std::size_t i = 0; i < model->model->layers->size(); ++i) {
    const auto& m = *model->model->layers[i];
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    // One projection over the modules side by side (q|k|v, gate|up): int4 when all of them
    // are AWQ linears, else the model's fp weights.
    auto fused = [&](const std::vector<std::string>& modules) {
      std::vector<torch::Tensor> weights, biases;
      std::vector<AwqTensor> quantized;
      for (const auto& name : modules) {
        weights.push_back(param(m, name + ".weight"));
        biases.push_back(param(m, name + ".bias"));
        if (awq && awq->count(prefix + name)) quantized.push_back(awq->at(prefix + name));
      }
      auto bias = conv(cat_or_undef(biases));
      if (quantized.size() == modules.size())
        return kernels::PackedLinear(awq_to(awq_concat_out(quantized), opts.device()), bias);
      return kernels::PackedLinear(conv(torch::cat(weights, 0)), bias);
    };
    Layer L;
    L.input_norm = conv(param(m, "input_layernorm.weight"));
    L.post_norm = conv(param(m, "post_attention_layernorm.weight"));
    L.qkv = fused({"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"});
    L.q_norm = conv(param(m, "self_attn.q_norm.weight"));
    L.k_norm = conv(param(m, "self_attn.k_norm.weight"));
    L.o = fused({"self_attn.o_proj"});
    L.gate_up = fused({"mlp.gate_proj", "mlp.up_proj"});
    L.down = fused({"mlp.down_proj"});
    // On the CPU not zeroed (huge pages; attention only reads positions that were written).
    for (auto* c : {&L.k_cache, &L.v_cache})
      *c = kernels::empty_kv_cache(num_blocks, cfg_.num_key_value_heads, block_size, cfg_.head_dim, dtype, kv_bits,
                                   opts.device());
    layers_.push_back(std::move(L));
  }
  auto positions = torch::arange(max_model_len, torch::TensorOptions().dtype(torch::kInt64).device(opts.device()));
  std::tie(rope_cos_, rope_sin_) = rope_cos_sin(positions, cfg_.head_dim, cfg_.rope_theta, cfg_.rope_scaling);
}

void ModelRunner::touch_kv_cache() {
  for (auto& L : layers_)
    for (auto* c : {&L.k_cache, &L.v_cache})
      for (auto* t : {&c->data, &c->params})
        if (t->defined() && t->device().is_cpu()) {
          // Zero bytes 4 KiB apart: each write faults in its page (a whole 2 MiB one where
          // the pool got huge pages) without rewriting the rest.
          auto* p = static_cast<volatile char*>(t->data_ptr());
          const auto bytes = t->numel() * t->element_size();
          at::parallel_for(0, (bytes + 4095) / 4096, 64, [&](std::int64_t b, std::int64_t e) {
            for (auto i = b; i < e; ++i) p[i * 4096] = 0;
          });
        }
}

torch::Tensor ModelRunner::forward(const std::vector<ScheduledSeq>& batch, const std::vector<bool>& wants_logits) {
  c10::InferenceMode inference;
  const auto t_prepare = std::chrono::steady_clock::now();
  const auto S = static_cast<std::int64_t>(batch.size());
  std::int64_t N = 0, max_blocks = 1;
  for (const auto& s : batch) {
    N += s.num_new;
    max_blocks = std::max<std::int64_t>(max_blocks, static_cast<std::int64_t>(s.seq->block_table.size()));
  }
  // Host-side batch description: token ids, positions, cache slots, per-sequence ranges.
  auto i64 = torch::TensorOptions().dtype(torch::kInt64);
  auto i32 = torch::TensorOptions().dtype(torch::kInt32);
  auto ids = torch::empty({N}, i64), pos = torch::empty({N}, i64), slots = torch::empty({N}, i64);
  auto query_start = torch::empty({S + 1}, i32), context_lens = torch::empty({S}, i32);
  auto block_tables = torch::zeros({S, max_blocks}, i32);
  std::vector<std::int64_t> logit_rows;
  {
    auto* idp = ids.data_ptr<std::int64_t>();
    auto* pp = pos.data_ptr<std::int64_t>();
    auto* sp = slots.data_ptr<std::int64_t>();
    auto* qs = query_start.data_ptr<std::int32_t>();
    auto* cl = context_lens.data_ptr<std::int32_t>();
    auto* bt = block_tables.data_ptr<std::int32_t>();
    std::int64_t row = 0;
    for (std::int64_t i = 0; i < S; ++i) {
      const Sequence& seq = *batch[i].seq;
      qs[i] = static_cast<std::int32_t>(row);
      for (int j = 0; j < batch[i].num_new; ++j, ++row) {
        const int p = seq.num_computed_tokens + j;
        idp[row] = seq.tokens[p];
        pp[row] = p;
        sp[row] = static_cast<std::int64_t>(seq.block_table[p / block_size_]) * block_size_ + p % block_size_;
      }
      cl[i] = seq.num_computed_tokens + batch[i].num_new;
      std::copy(seq.block_table.begin(), seq.block_table.end(), bt + i * max_blocks);
      if (wants_logits[i]) logit_rows.push_back(row - 1);
    }
    qs[S] = static_cast<std::int32_t>(row);
  }
  const auto dev = embed_.device();
  // The cache metadata stays on the host, where the attention and cache-write checks read it
  // without a device sync; off the CPU its device copies are made here, once per step.
  torch::Tensor slots_dev, attention_meta_dev;
  if (!dev.is_cpu()) {
    ids = ids.to(dev), pos = pos.to(dev), slots_dev = slots.to(dev);
    attention_meta_dev = kernels::pack_attention_metadata(query_start, context_lens, block_tables, dev);
  }

  last_prepare_s_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_prepare).count();

  const auto H = cfg_.num_attention_heads, KVH = cfg_.num_key_value_heads, D = cfg_.head_dim;
  const double eps = cfg_.rms_norm_eps, scale = 1.0 / std::sqrt(static_cast<double>(D));
  auto cos = rope_cos_.index_select(0, pos), sin = rope_sin_.index_select(0, pos);  // [N, D]

  auto h = embed_.index_select(0, ids);  // [N, hidden]
  for (auto& L : layers_) {
    auto qkv = L.qkv(kernels::rms_norm(h, L.input_norm, eps));
    auto q = qkv.narrow(1, 0, H * D).view({1, N, H, D});
    auto k = qkv.narrow(1, H * D, KVH * D).view({1, N, KVH, D});
    auto v = qkv.narrow(1, (H + KVH) * D, KVH * D).reshape({N, KVH, D});
    if (L.q_norm.defined()) {
      q = kernels::rms_norm(q, L.q_norm, eps);
      k = kernels::rms_norm(k, L.k_norm, eps);
    }
    q = kernels::rope(q, cos, sin).view({N, H, D});
    k = kernels::rope(k, cos, sin).view({N, KVH, D});
    kernels::write_kv_cache(k, v, L.k_cache, L.v_cache, slots, slots_dev);
    auto attn = kernels::paged_attention(q, L.k_cache, L.v_cache, query_start, context_lens, block_tables, scale,
                                         attention_meta_dev);
    h = h + L.o(attn.view({N, H * D}));
    auto mlp_in = kernels::rms_norm(h, L.post_norm, eps);
    auto act = kernels::swiglu_packed(L.gate_up(mlp_in));
    h = h + L.down(act);
  }
  if (logit_rows.empty()) return torch::empty({0, cfg_.vocab_size}, torch::kFloat32);
  auto rows = torch::tensor(logit_rows, i64).to(dev);
  auto last = kernels::rms_norm(h.index_select(0, rows), final_norm_, eps);
  return lm_head_(last).to(torch::kCPU, torch::kFloat32).contiguous();
}

}  // namespace llmctl
