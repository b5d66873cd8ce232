// AWQ: the activation-aware scale search, the clip search and int4 RTN, layer by layer on
// the unquantized model's activations (see quant/awq_search.h for the recipe).
#include "llmctl/quant/awq_search.h"

#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <sstream>

#include "llmctl/data/jsonl.h"
#include "llmctl/kernels/rope.h"
#include "llmctl/kernels/swiglu.h"
#include "llmctl/tokenizer/chat_format.h"
#include "llmctl/tokenizer/tokenizer.h"
#include "llmctl/util/error.h"
#include "llmctl/util/log.h"
#include "llmctl/util/progress.h"

namespace llmctl {

namespace quant {
const char* default_calibration_jsonl();  // dataset/calib/calib.jsonl, embedded at build time
}

namespace {

using Linear = torch::nn::Linear;
using Clock = std::chrono::steady_clock;

double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The pieces of one decoder layer the search runs separately (same math as
// DecoderLayerImpl::forward, which is attention(o_proj(core)) + mlp).
struct LayerRun {
  DecoderLayerImpl* L;
  torch::Tensor cos, sin;
  std::int64_t n_heads, n_kv, head_dim;

  // Attention up to o_proj's input: [B, T, hidden] normed -> [B, T, heads * head_dim].
  torch::Tensor attn_core(const torch::Tensor& xn) const {
    auto& a = *L->self_attn;
    const auto B = xn.size(0), T = xn.size(1);
    auto q = a.q_proj->forward(xn).view({B, T, n_heads, head_dim});
    auto k = a.k_proj->forward(xn).view({B, T, n_kv, head_dim});
    auto v = a.v_proj->forward(xn).view({B, T, n_kv, head_dim});
    if (a.q_norm) {
      q = a.q_norm->forward(q);
      k = a.k_norm->forward(k);
    }
    q = kernels::rope(q, cos, sin).transpose(1, 2);
    k = kernels::rope(k, cos, sin).transpose(1, 2);
    v = v.transpose(1, 2);
    auto out = at::scaled_dot_product_attention(q, k, v, {}, 0.0, /*is_causal=*/true, std::nullopt,
                                                /*enable_gqa=*/n_kv != n_heads);
    return out.transpose(1, 2).reshape({B, T, n_heads * head_dim});
  }
  torch::Tensor attn(const torch::Tensor& xn) const { return L->self_attn->o_proj->forward(attn_core(xn)); }
  torch::Tensor down_input(const torch::Tensor& xn) const {
    auto& m = *L->mlp;
    return kernels::swiglu(m.gate_proj->forward(xn), m.up_proj->forward(xn));
  }
  torch::Tensor mlp(const torch::Tensor& xn) const { return L->mlp->forward(xn); }
};

// f over the blocks of x ([nb, T, *]) a few blocks at a time, concatenated.
torch::Tensor chunked(const torch::Tensor& x, std::int64_t per, const std::function<torch::Tensor(const torch::Tensor&)>& f) {
  std::vector<torch::Tensor> parts;
  for (std::int64_t b = 0; b < x.size(0); b += per) parts.push_back(f(x.narrow(0, b, std::min(per, x.size(0) - b))));
  return parts.size() == 1 ? parts[0] : torch::cat(parts, 0);
}

// Mean squared error of f(x) against target over all blocks.
double chunked_mse(const torch::Tensor& x, const torch::Tensor& target, std::int64_t per,
                   const std::function<torch::Tensor(const torch::Tensor&)>& f) {
  double sum = 0;
  for (std::int64_t b = 0; b < x.size(0); b += per) {
    const auto n = std::min(per, x.size(0) - b);
    sum += (f(x.narrow(0, b, n)) - target.narrow(0, b, n)).pow(2).sum().item<double>();
  }
  return sum / static_cast<double>(target.numel());
}

struct ScaleSearch {
  torch::Tensor s;  // [K] fp32
  double ratio = 0, loss = 0, loss_rtn = 0;
};

// AutoAWQ's _search_best_scale: the per-input-channel scale s minimising the MSE of the
// block output when `lins` are quantized as W*s (and their input divided by s).
ScaleSearch search_scale(const torch::Tensor& x, const std::vector<Linear>& lins,
                         const std::function<torch::Tensor(const torch::Tensor&)>& block, const torch::Tensor& target,
                         std::int64_t per, const AwqOptions& opt) {
  const auto K = x.size(-1);
  const int g = opt.group_size;
  auto x_mean = chunked(x, per, [&](const torch::Tensor& c) { return c.abs().reshape({-1, K}).sum(0).unsqueeze(0); })
                    .sum(0) / static_cast<double>(x.numel() / K);
  std::vector<torch::Tensor> ws, orig;
  for (const auto& l : lins) {
    ws.push_back(l->weight);
    orig.push_back(l->weight.detach().clone());
  }
  auto W = torch::cat(orig, 0);
  auto wg = W.abs().view({-1, g});
  auto w_mean = (wg / (std::get<0>(wg.max(1, true)) + 1e-6)).view(W.sizes()).mean(0);

  auto eval_with = [&](const torch::Tensor& s) {
    for (std::size_t j = 0; j < lins.size(); ++j) {
      if (s.defined())
        ws[j].copy_(awq_fake_quantize(orig[j] * s.view({1, -1}), g) / s.view({1, -1}));
      else
        ws[j].copy_(awq_fake_quantize(orig[j], g));
    }
    return chunked_mse(x, target, per, block);
  };
  ScaleSearch best;
  best.loss = std::numeric_limits<double>::infinity();
  best.loss_rtn = eval_with({});
  for (int r = 0; r < opt.n_grid; ++r) {
    const double ratio = static_cast<double>(r) / opt.n_grid;
    auto s = (x_mean.pow(ratio) / (w_mean.pow(1 - ratio) + 1e-4)).clamp_min(1e-4);
    s = s / (s.max() * s.min()).sqrt();
    s = torch::where(torch::isfinite(s), s, torch::ones_like(s));
    const double loss = eval_with(s);
    if (loss < best.loss) {
      best.loss = loss;
      best.ratio = ratio;
      best.s = s;
    }
  }
  for (std::size_t j = 0; j < lins.size(); ++j) ws[j].copy_(orig[j]);
  if (!best.s.defined()) best.s = torch::ones({K}, x.options());  // every loss was NaN
  return best;
}

// AutoAWQ's _compute_best_clip: per output channel and group, the max |w| (shrunk by
// 1 - i/20) whose quantized dot products with the sampled inputs err least. Applies it.
void clip_linear(const Linear& lin, const torch::Tensor& xs /* [n, K] */, const AwqOptions& opt) {
  auto& w = lin->weight;
  const std::int64_t N = w.size(0), K = w.size(1), g = opt.group_size, G = K / g, n = xs.size(0);
  auto xg = xs.view({n, G, g}).permute({1, 0, 2});  // [G, n, g]
  auto org_max = std::get<0>(w.abs().view({N, G, g}).max(-1));  // [N, G]
  auto best = org_max.clone();
  // Output channels per pass: bounded [G, n, nc] products, nc a multiple of 8.
  std::int64_t nc = std::max<std::int64_t>(8, (std::int64_t{8} << 20) / std::max<std::int64_t>(1, G * n) / 8 * 8);
  nc = std::min(nc, N);
  for (std::int64_t n0 = 0; n0 < N; n0 += nc) {
    const auto m = std::min(nc, N - n0);
    auto wc = w.narrow(0, n0, m).view({m, G, g});
    auto org_out = torch::bmm(xg, wc.permute({1, 2, 0}));  // [G, n, m]
    auto om = org_max.narrow(0, n0, m);
    auto min_err = torch::full({m, G}, std::numeric_limits<float>::infinity(), om.options());
    auto bm = best.narrow(0, n0, m);
    for (int i = 0; i < opt.clip_steps; ++i) {
      auto mx = (om * (1.0 - i / 20.0)).unsqueeze(-1);
      auto cw = torch::clamp(wc, -mx, mx);
      auto qw = awq_fake_quantize(cw.reshape({m, K}), static_cast<int>(g)).view({m, G, g});
      auto err = (torch::bmm(xg, qw.permute({1, 2, 0})) - org_out).pow(2).mean(1).t();  // [m, G]
      auto better = err < min_err;
      min_err = torch::where(better, err, min_err);
      bm.copy_(torch::where(better, mx.squeeze(-1), bm));
    }
  }
  auto b = best.unsqueeze(-1);
  w.copy_(torch::clamp(w.view({N, G, g}), -b, b).view({N, K}));
}

// Up to `max_tokens` rows of x [nb, T, K] taken at a fixed stride (AutoAWQ's 0::step).
torch::Tensor sample_tokens(const torch::Tensor& x, std::int64_t max_tokens) {
  auto flat = x.reshape({-1, x.size(-1)});
  const auto step = std::max<std::int64_t>(1, flat.size(0) / std::max<std::int64_t>(1, max_tokens));
  return flat.slice(0, 0, flat.size(0), step).contiguous();
}

void fold_norm(RMSNormImpl& norm, const std::vector<Linear>& lins, const torch::Tensor& s) {
  norm.weight.div_(s);
  for (const auto& l : lins) l->weight.mul_(s.view({1, -1}));
}

void fold_linear(const Linear& prev, const Linear& next, const torch::Tensor& s) {
  prev->weight.div_(s.view({-1, 1}));
  if (prev->bias.defined()) prev->bias.div_(s);
  next->weight.mul_(s.view({1, -1}));
}

std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r\n");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r\n") - b + 1);
}

}  // namespace

void awq_check_model(const ModelConfig& c, int group_size) {
  if (group_size <= 0) throw Error("--group-size must be positive, got " + std::to_string(group_size));
  struct Lin {
    const char* name;
    std::int64_t out, in;
  };
  const Lin lins[] = {{"self_attn.q_proj", c.q_dim(), c.hidden_size},       {"self_attn.k_proj", c.kv_dim(), c.hidden_size},
                      {"self_attn.v_proj", c.kv_dim(), c.hidden_size},      {"self_attn.o_proj", c.hidden_size, c.q_dim()},
                      {"mlp.gate_proj", c.intermediate_size, c.hidden_size}, {"mlp.up_proj", c.intermediate_size, c.hidden_size},
                      {"mlp.down_proj", c.hidden_size, c.intermediate_size}};
  for (const auto& l : lins) {
    if (l.in % group_size != 0) {
      // The largest power-of-two group size that divides every linear's in_features.
      std::int64_t ok = 0;
      for (std::int64_t g = 256; g >= 8; g /= 2)
        if (c.hidden_size % g == 0 && c.q_dim() % g == 0 && c.intermediate_size % g == 0) {
          ok = g;
          break;
        }
      throw Error("--group-size " + std::to_string(group_size) + ": " + l.name + " has " + std::to_string(l.in) +
                  " input features, not a multiple of it" +
                  (ok ? " (this model works with --group-size " + std::to_string(ok) + ")" : std::string()));
    }
    if (l.out % 8 != 0)
      throw Error(std::string(l.name) + " has " + std::to_string(l.out) +
                  " output features: AWQ packs 8 per int32, so it must be a multiple of 8");
  }
}

AwqResult awq_quantize_model(CausalLM& model, const torch::Tensor& calib, const AwqOptions& opt) {
  const auto t_start = Clock::now();
  torch::NoGradGuard no_grad;
  const ModelConfig& cfg = model->config();
  awq_check_model(cfg, opt.group_size);
  if (opt.n_grid <= 0) throw Error("AWQ: the scale grid needs at least one point");
  if (model->parameters().front().scalar_type() != torch::kFloat32) model->to(torch::kFloat32);
  model->eval();
  const auto device = model->parameters().front().device();
  const auto n_layers = cfg.num_hidden_layers;
  const char* names[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                         "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  AwqResult res;
  res.layers = nlohmann::json::array();
  Progress bar(opt.search ? "awq" : "rtn", static_cast<std::uint64_t>(n_layers), "layers", opt.progress);

  torch::Tensor X, cos, sin;
  std::int64_t per = 1;
  if (opt.search) {
    if (!calib.defined() || calib.dim() != 2 || calib.numel() == 0) throw Error("AWQ: no calibration tokens");
    auto ids = calib.to(device, torch::kInt64);
    const auto T = ids.size(1);
    res.calib_tokens = ids.numel();
    per = std::max<std::int64_t>(1, opt.chunk_tokens / T);
    auto pos = torch::arange(T, torch::TensorOptions().dtype(torch::kInt64).device(device));
    std::tie(cos, sin) = rope_cos_sin(pos, cfg.head_dim, cfg.rope_theta, cfg.rope_scaling);
    X = chunked(ids, per, [&](const torch::Tensor& c) { return model->model->embed_tokens->forward(c); });
  }

  for (std::int64_t i = 0; i < n_layers; ++i) {
    const auto t0 = Clock::now();
    auto* L = model->model->layers[i]->as<DecoderLayerImpl>();
    auto& attn = *L->self_attn;
    auto& mlp = *L->mlp;
    std::map<std::string, Linear> lin = {{"self_attn.q_proj", attn.q_proj}, {"self_attn.k_proj", attn.k_proj},
                                         {"self_attn.v_proj", attn.v_proj}, {"self_attn.o_proj", attn.o_proj},
                                         {"mlp.gate_proj", mlp.gate_proj},  {"mlp.up_proj", mlp.up_proj},
                                         {"mlp.down_proj", mlp.down_proj}};
    nlohmann::json info = {{"layer", i}};
    if (opt.search) {
      LayerRun run{L, cos, sin, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim};
      // 1. The original layer's activations: every linear's input and the fp outputs.
      auto xn1 = chunked(X, per, [&](const torch::Tensor& c) { return L->input_layernorm->forward(c); });
      auto o_in = chunked(xn1, per, [&](const torch::Tensor& c) { return run.attn_core(c); });
      auto attn_out = chunked(o_in, per, [&](const torch::Tensor& c) { return attn.o_proj->forward(c); });
      auto H = X + attn_out;
      auto xn2 = chunked(H, per, [&](const torch::Tensor& c) { return L->post_attention_layernorm->forward(c); });
      auto d_in = chunked(xn2, per, [&](const torch::Tensor& c) { return run.down_input(c); });
      auto mlp_out = chunked(d_in, per, [&](const torch::Tensor& c) { return mlp.down_proj->forward(c); });
      X = H + mlp_out;  // the next layer's input: the unquantized model's
      H = torch::Tensor();

      // 2. Scale search for each group on the original weights, then fold them all.
      auto report = [&](const char* prev, const std::vector<std::string>& ls, const ScaleSearch& s) {
        info["groups"].push_back({{"prev", prev}, {"linears", ls}, {"ratio", s.ratio}, {"mse", s.loss}, {"mse_rtn", s.loss_rtn}});
      };
      auto s_qkv = search_scale(xn1, {attn.q_proj, attn.k_proj, attn.v_proj}, [&](const torch::Tensor& c) { return run.attn(c); },
                                attn_out, per, opt);
      report("input_layernorm", {"q_proj", "k_proj", "v_proj"}, s_qkv);
      ScaleSearch s_vo;
      const bool vo = attn.v_proj->weight.sizes() == attn.o_proj->weight.sizes();
      if (vo) {
        s_vo = search_scale(o_in, {attn.o_proj}, [&](const torch::Tensor& c) { return attn.o_proj->forward(c); }, attn_out,
                            per, opt);
        report("v_proj", {"o_proj"}, s_vo);
      }
      auto s_mlp = search_scale(xn2, {mlp.gate_proj, mlp.up_proj}, [&](const torch::Tensor& c) { return run.mlp(c); },
                                mlp_out, per, opt);
      report("post_attention_layernorm", {"gate_proj", "up_proj"}, s_mlp);
      auto s_down = search_scale(d_in, {mlp.down_proj}, [&](const torch::Tensor& c) { return mlp.down_proj->forward(c); },
                                 mlp_out, per, opt);
      report("up_proj", {"down_proj"}, s_down);

      fold_norm(*L->input_layernorm, {attn.q_proj, attn.k_proj, attn.v_proj}, s_qkv.s);
      if (vo) fold_linear(attn.v_proj, attn.o_proj, s_vo.s);
      fold_norm(*L->post_attention_layernorm, {mlp.gate_proj, mlp.up_proj}, s_mlp.s);
      fold_linear(mlp.up_proj, mlp.down_proj, s_down.s);

      // 3. Clip search on the scaled inputs (not q/k: attention scores are too sensitive).
      if (opt.clip) {
        auto x_qkv = sample_tokens(xn1, opt.clip_tokens) / s_qkv.s;
        auto x_o = sample_tokens(o_in, opt.clip_tokens);
        if (vo) x_o = x_o / s_vo.s;
        auto x_mlp = sample_tokens(xn2, opt.clip_tokens) / s_mlp.s;
        auto x_down = sample_tokens(d_in, opt.clip_tokens) / s_down.s;
        clip_linear(attn.v_proj, x_qkv, opt);
        clip_linear(attn.o_proj, x_o, opt);
        clip_linear(mlp.gate_proj, x_mlp, opt);
        clip_linear(mlp.up_proj, x_mlp, opt);
        clip_linear(mlp.down_proj, x_down, opt);
      }
    }
    // 4. int4 round-to-nearest of the (scaled, clipped) weights.
    const std::string prefix = "model.layers." + std::to_string(i) + ".";
    for (const char* n : names) res.linears.emplace(prefix + n, awq_quantize(lin.at(n)->weight, opt.group_size));
    info["seconds"] = since(t0);
    res.layers.push_back(info);
    std::ostringstream extra;
    extra << "layer " << i;
    if (opt.search) {
      extra.precision(3);
      extra << " ratios";
      for (const auto& g : info["groups"]) extra << " " << g["ratio"].get<double>();
    }
    bar.set(static_cast<std::uint64_t>(i + 1), extra.str());
  }
  bar.finish();
  res.seconds = since(t_start);
  return res;
}

torch::Tensor awq_calibration(const Tokenizer& tok, const std::vector<std::string>& files, int samples, int seq_len) {
  if (samples <= 0) throw Error("--calib-samples must be positive, got " + std::to_string(samples));
  if (seq_len <= 1) throw Error("--calib-seq-len must be at least 2, got " + std::to_string(seq_len));
  const auto tmpl = ChatTemplate::from_template(tok.chat_template());
  std::vector<std::int64_t> all;
  int docs = 0;
  auto add_ids = [&](std::vector<int> ids, bool bos) {
    if (ids.empty()) return;
    if (bos && tok.bos_id() >= 0 && ids.front() != tok.bos_id()) ids.insert(ids.begin(), tok.bos_id());
    if (static_cast<int>(ids.size()) > seq_len) ids.resize(static_cast<std::size_t>(seq_len));
    all.insert(all.end(), ids.begin(), ids.end());
    ++docs;
  };
  // One jsonl record: pretrain "text", or a rendered "conversations" list.
  auto add_record = [&](const nlohmann::json& j, const std::string& where) {
    if (j.is_object() && j.contains("text") && j["text"].is_string()) {
      auto text = trim(j["text"].get<std::string>());
      if (!text.empty()) add_ids(tok.encode(text, false), tok.add_bos() || tok.bos_id() >= 0);
      return;
    }
    if (j.is_object() && j.contains("conversations")) {
      std::vector<Message> conv;
      try {
        conv = record_conversation(j);
      } catch (const Error& e) {
        log::warn(where + ": skipped (" + e.what() + ")");
        return;
      }
      add_ids(tok.encode(tmpl.render(conv, false), true), tok.add_bos());
      return;
    }
    log::warn(where + ": skipped (no \"text\" or \"conversations\")");
  };
  if (files.empty()) {
    std::istringstream in(quant::default_calibration_jsonl());
    std::string line;
    for (int n = 1; docs < samples && std::getline(in, line); ++n) {
      if (trim(line).empty()) continue;
      auto j = nlohmann::json::parse(line, nullptr, false);
      if (!j.is_discarded()) add_record(j, "calib.jsonl:" + std::to_string(n));
    }
  }
  for (const auto& f : files) {
    if (docs >= samples) break;
    if (!std::filesystem::is_regular_file(f)) throw Error("--calib-data " + f + ": no such file");
    const auto ext = std::filesystem::path(f).extension().string();
    if (ext == ".jsonl" || ext == ".json") {
      JsonlReader r(f);
      nlohmann::json j;
      while (docs < samples && r.next(j)) add_record(j, f + ":" + std::to_string(r.line_number()));
    } else {
      DocumentStream s({f});
      std::string text;
      while (docs < samples && s.next(text)) {
        text = trim(text);
        if (!text.empty()) add_ids(tok.encode(text, false), tok.bos_id() >= 0);
      }
    }
  }
  const std::string what = files.empty() ? std::string("the built-in calibration set") : "--calib-data " + files.front();
  if (all.size() < 2) throw Error(what + ": no calibration text (need documents with a \"text\" or \"conversations\" field)");
  const auto n = static_cast<std::int64_t>(all.size());
  log::info("calibration: " + std::to_string(docs) + " documents, " + std::to_string(n) + " tokens");
  if (n < seq_len) return torch::tensor(all, torch::kInt64).view({1, n});
  const auto blocks = n / seq_len;
  return torch::tensor(all, torch::kInt64).narrow(0, 0, blocks * seq_len).view({blocks, seq_len}).clone();
}

}  // namespace llmctl
