#include "llmctl/convert/gguf_convert.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "llmctl/io/gguf.h"
#include "llmctl/io/model_dir.h"
#include "llmctl/io/safetensors.h"
#include "llmctl/quant/ggml_quants.h"
#include "llmctl/util/error.h"
#include "llmctl/util/log.h"

namespace fs = std::filesystem;

namespace llmctl {
namespace {

// llama_ftype values (general.file_type): what most of the 2-D weights are.
std::uint32_t file_type_of(GgmlType t) {
  switch (t) {
    case GgmlType::F32: return 0;
    case GgmlType::F16: return 1;
    case GgmlType::Q4_0: return 2;
    case GgmlType::Q8_0: return 7;
    case GgmlType::BF16: return 32;
    default: throw Error("no GGUF file type for " + ggml_type_name(t));
  }
}

GgmlType export_type(const std::string& dtype) {
  if (dtype == "f32") return GgmlType::F32;
  if (dtype == "f16") return GgmlType::F16;
  if (dtype == "bf16") return GgmlType::BF16;
  if (dtype == "q8_0") return GgmlType::Q8_0;
  if (dtype == "q4_0") return GgmlType::Q4_0;
  throw Error("GGUF export dtype must be f32, f16, bf16, q8_0 or q4_0, not '" + dtype + "'");
}

struct NamePair {
  const char* hf;    // after "model.layers.N."
  const char* gguf;  // after "blk.N."
};

constexpr NamePair kLayerNames[] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.o_proj.bias", "attn_output.bias"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.gate_proj.bias", "ffn_gate.bias"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.up_proj.bias", "ffn_up.bias"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
    {"mlp.down_proj.bias", "ffn_down.bias"},
};

constexpr NamePair kGlobalNames[] = {
    {"model.embed_tokens.weight", "token_embd.weight"},
    {"model.norm.weight", "output_norm.weight"},
    {"lm_head.weight", "output.weight"},
};

// "prefix<digits>.rest" -> (N, rest); false when `name` does not have that form.
bool split_layer(const std::string& name, const std::string& prefix, std::int64_t* layer, std::string* rest) {
  if (name.compare(0, prefix.size(), prefix) != 0) return false;
  std::size_t i = prefix.size(), j = i;
  while (j < name.size() && std::isdigit(static_cast<unsigned char>(name[j]))) ++j;
  if (j == i || j - i > 6 || j >= name.size() || name[j] != '.') return false;
  *layer = std::stoll(name.substr(i, j - i));
  *rest = name.substr(j + 1);
  return true;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

// The tensors a model of `cfg` has, under HF names, with their shapes (in HF order).
std::vector<std::pair<std::string, std::vector<std::int64_t>>> expected_tensors(const ModelConfig& c) {
  const std::int64_t h = c.hidden_size, q = c.q_dim(), kv = c.kv_dim(), ff = c.intermediate_size;
  std::vector<std::pair<std::string, std::vector<std::int64_t>>> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, h}});
  for (std::int64_t i = 0; i < c.num_hidden_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    out.push_back({p + "input_layernorm.weight", {h}});
    out.push_back({p + "self_attn.q_proj.weight", {q, h}});
    out.push_back({p + "self_attn.k_proj.weight", {kv, h}});
    out.push_back({p + "self_attn.v_proj.weight", {kv, h}});
    out.push_back({p + "self_attn.o_proj.weight", {h, q}});
    if (c.attention_bias) {
      out.push_back({p + "self_attn.q_proj.bias", {q}});
      out.push_back({p + "self_attn.k_proj.bias", {kv}});
      out.push_back({p + "self_attn.v_proj.bias", {kv}});
    }
    if (c.o_proj_bias) out.push_back({p + "self_attn.o_proj.bias", {h}});
    if (c.qk_norm) {
      out.push_back({p + "self_attn.q_norm.weight", {c.head_dim}});
      out.push_back({p + "self_attn.k_norm.weight", {c.head_dim}});
    }
    out.push_back({p + "post_attention_layernorm.weight", {h}});
    out.push_back({p + "mlp.gate_proj.weight", {ff, h}});
    out.push_back({p + "mlp.up_proj.weight", {ff, h}});
    out.push_back({p + "mlp.down_proj.weight", {h, ff}});
    if (c.mlp_bias) {
      out.push_back({p + "mlp.gate_proj.bias", {ff}});
      out.push_back({p + "mlp.up_proj.bias", {ff}});
      out.push_back({p + "mlp.down_proj.bias", {h}});
    }
  }
  out.push_back({"model.norm.weight", {h}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, h}});
  return out;
}

// Llama 3's per-frequency RoPE divisors (llama.cpp's rope_freqs.weight), as its converter
// computes them: 1 for short wavelengths, `factor` for long ones, a smooth blend between.
std::vector<float> llama3_rope_factors(const ModelConfig& c) {
  const auto& rs = c.rope_scaling;
  const double old_ctx = static_cast<double>(rs.original_max_position_embeddings);
  const double low_wavelen = old_ctx / rs.low_freq_factor, high_wavelen = old_ctx / rs.high_freq_factor;
  std::vector<float> out;
  for (std::int64_t i = 0; i < c.head_dim; i += 2) {
    const float freq = 1.0f / std::pow(static_cast<float>(c.rope_theta), static_cast<float>(i) / static_cast<float>(c.head_dim));
    const double wavelen = 2 * M_PI / freq;
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(static_cast<float>(rs.factor));
    } else {
      const double smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      out.push_back(static_cast<float>(1.0 / ((1 - smooth) / rs.factor + smooth)));
    }
  }
  return out;
}

// The Llama 3 rope_scaling that gives `factors`. The blend depends only on
// s(wavelen) = L/wavelen*k - lf*k with k = 1/(hf - lf), so L is fixed at Llama 3.1's 8192
// and lf, hf fitted; the result is checked by recomputing the factors.
RopeScaling fit_llama3_rope(const std::vector<float>& factors, const ModelConfig& c, const std::string& path) {
  auto bad = [&](const std::string& why) {
    return Error(path + ": rope_freqs.weight does not follow Llama 3 rope scaling (" + why + ")");
  };
  if (static_cast<std::int64_t>(factors.size()) * 2 != c.head_dim)
    throw bad(std::to_string(factors.size()) + " values for head_dim " + std::to_string(c.head_dim));
  const double factor = *std::max_element(factors.begin(), factors.end());
  if (!(factor >= 1.0)) throw bad("largest factor below 1");
  RopeScaling rs;
  rs.type = "llama3";
  rs.factor = factor;
  rs.original_max_position_embeddings = 8192;
  const double L = 8192;
  std::vector<double> inv_wavelen(factors.size());
  for (std::size_t i = 0; i < factors.size(); ++i) {
    const float freq = 1.0f / std::pow(static_cast<float>(c.rope_theta),
                                       static_cast<float>(2 * i) / static_cast<float>(c.head_dim));
    inv_wavelen[i] = freq / (2 * M_PI);
  }
  auto near = [](double a, double b) { return std::fabs(a - b) <= 1e-5 * std::max(1.0, std::fabs(b)); };
  // Blended points: s = (1/f - 1/factor) / (1 - 1/factor), linear in 1/wavelen.
  std::vector<std::pair<double, double>> pts;
  double last_one = -1, first_full = -1;  // 1/wavelen bounds of the plain regions
  for (std::size_t i = 0; i < factors.size(); ++i) {
    if (near(factors[i], 1.0)) {
      if (last_one < 0 || inv_wavelen[i] < last_one) last_one = inv_wavelen[i];
    } else if (near(factors[i], factor)) {
      if (first_full < 0 || inv_wavelen[i] > first_full) first_full = inv_wavelen[i];
    } else {
      pts.push_back({inv_wavelen[i], (1.0 / factors[i] - 1.0 / factor) / (1.0 - 1.0 / factor)});
    }
  }
  if (near(factor, 1.0)) return RopeScaling{};  // every factor 1: no scaling at all
  if (pts.size() >= 2) {
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (auto [x, y] : pts) {
      sx += x;
      sy += y;
      sxx += x * x;
      sxy += x * y;
    }
    const double n = static_cast<double>(pts.size());
    const double a = (n * sxy - sx * sy) / (n * sxx - sx * sx), b = (sy - a * sx) / n;
    if (!(a > 0)) throw bad("the blend does not grow with frequency");
    const double span = L / a;  // hf - lf
    rs.low_freq_factor = -b * span;
    rs.high_freq_factor = rs.low_freq_factor + span;
  } else if (last_one > 0 && first_full > 0) {
    // No blended point: the edges sit on the outermost plain frequencies (where the blend
    // gives exactly 1 and exactly `factor`).
    rs.high_freq_factor = L * last_one;
    rs.low_freq_factor = L * first_full;
  } else {
    throw bad("cannot tell the blend's range");
  }
  ModelConfig check = c;
  check.rope_scaling = rs;
  const auto again = llama3_rope_factors(check);
  for (std::size_t i = 0; i < factors.size(); ++i)
    if (std::fabs(again[i] - factors[i]) > 1e-3f * std::max(1.0f, std::fabs(factors[i])))
      throw bad("value " + std::to_string(i) + " is " + std::to_string(factors[i]) + ", the fitted scaling gives " +
                std::to_string(again[i]));
  return rs;
}

// The GGUF architecture a config maps to, or an Error saying why none does.
std::string gguf_arch_for(const ModelConfig& c, const std::string& source) {
  if (!c.qk_norm) return "llama";
  if (c.o_proj_bias || c.mlp_bias)
    throw Error(source + ": per-head q/k norm together with o_proj or MLP biases has no llama.cpp architecture");
  return "qwen3";
}

void add_tokenizer(GgufWriter& w, const Tokenizer& tok, const ModelConfig& cfg, const std::string& source) {
  auto vocab = tok.vocabulary();
  if (static_cast<std::int64_t>(vocab.size()) > cfg.vocab_size)
    throw Error(source + ": the tokenizer has " + std::to_string(vocab.size()) + " tokens but the model's vocab_size is " +
                std::to_string(cfg.vocab_size));
  const bool spm = tok.kind() == Tokenizer::Kind::SentencePiece;
  // Embedding rows past the tokenizer (vocab padded to a multiple, as many models do) get
  // placeholder tokens no text encodes to; llama.cpp needs one token per row.
  for (auto id = static_cast<std::int64_t>(vocab.size()); id < cfg.vocab_size; ++id)
    vocab.push_back({"[PAD" + std::to_string(id) + "]", spm ? -1000.0f : 0.0f, TokenType::Unused});

  std::vector<std::string> pieces;
  std::vector<float> scores;
  std::vector<std::int32_t> types;
  int unk = -1;
  for (std::size_t i = 0; i < vocab.size(); ++i) {
    pieces.push_back(vocab[i].piece);
    scores.push_back(vocab[i].score);
    types.push_back(static_cast<std::int32_t>(vocab[i].type));
    if (vocab[i].type == TokenType::Unknown && unk < 0) unk = static_cast<int>(i);
  }
  if (spm) {
    w.add_string("tokenizer.ggml.model", "llama");
    w.add_string_array("tokenizer.ggml.tokens", pieces);
    w.add_f32_array("tokenizer.ggml.scores", scores);
    w.add_i32_array("tokenizer.ggml.token_type", types);
    w.add_bool("tokenizer.ggml.add_space_prefix", tok.add_space_prefix());
  } else {
    const std::string pre = tok.pre_tokenizer_name();
    if (pre.empty())
      throw Error(source + ": the tokenizer's pre-tokenizer matches none that llama.cpp knows, so a GGUF of it "
                  "would tokenize differently");
    w.add_string("tokenizer.ggml.model", "gpt2");
    w.add_string("tokenizer.ggml.pre", pre);
    w.add_string_array("tokenizer.ggml.tokens", pieces);
    w.add_i32_array("tokenizer.ggml.token_type", types);
    w.add_string_array("tokenizer.ggml.merges", tok.merges());
  }
  const auto n = static_cast<std::int64_t>(vocab.size());
  auto in_vocab = [&](std::int64_t id) { return id >= 0 && id < n; };
  // The first eos id stops generation in llama.cpp; the tokenizer's own wins when it is
  // one of the model's, and further ones go in as end-of-turn.
  std::int64_t eos = cfg.eos_token_ids.empty() ? tok.eos_id() : cfg.eos_token_ids.front();
  if (tok.eos_id() >= 0 &&
      std::find(cfg.eos_token_ids.begin(), cfg.eos_token_ids.end(), tok.eos_id()) != cfg.eos_token_ids.end())
    eos = tok.eos_id();
  const std::int64_t bos = tok.bos_id() >= 0 ? tok.bos_id() : cfg.bos_token_id;
  if (in_vocab(bos)) w.add_u32("tokenizer.ggml.bos_token_id", static_cast<std::uint32_t>(bos));
  if (in_vocab(eos)) w.add_u32("tokenizer.ggml.eos_token_id", static_cast<std::uint32_t>(eos));
  for (auto id : cfg.eos_token_ids) {
    if (id != eos && in_vocab(id)) {
      w.add_u32("tokenizer.ggml.eot_token_id", static_cast<std::uint32_t>(id));
      break;
    }
  }
  if (in_vocab(unk)) w.add_u32("tokenizer.ggml.unknown_token_id", static_cast<std::uint32_t>(unk));
  if (in_vocab(tok.pad_id())) w.add_u32("tokenizer.ggml.padding_token_id", static_cast<std::uint32_t>(tok.pad_id()));
  w.add_bool("tokenizer.ggml.add_bos_token", tok.add_bos());
  w.add_bool("tokenizer.ggml.add_eos_token", false);
  if (!tok.chat_template().empty()) w.add_string("tokenizer.chat_template", tok.chat_template());
}

// A stable, readable general.name: the model directory's name (its run's for run/final).
std::string model_name(const std::string& path) {
  fs::path p = fs::absolute(path).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  std::error_code ec;
  std::string name = fs::is_regular_file(p, ec) ? p.stem().string() : p.filename().string();
  if ((name == "final" || name.rfind("checkpoint-", 0) == 0) && !p.parent_path().filename().empty())
    name = p.parent_path().filename().string() + "-" + name;
  return name.empty() ? "llmctl" : name;
}

}  // namespace

// ---------------------------------------------------------------- names, permutation

std::string gguf_tensor_name(const std::string& hf_name) {
  for (const auto& g : kGlobalNames)
    if (hf_name == g.hf) return g.gguf;
  std::int64_t layer;
  std::string rest;
  if (!split_layer(hf_name, "model.layers.", &layer, &rest)) return "";
  for (const auto& l : kLayerNames)
    if (rest == l.hf) return "blk." + std::to_string(layer) + "." + l.gguf;
  return "";
}

std::string hf_tensor_name(const std::string& gguf_name) {
  for (const auto& g : kGlobalNames)
    if (gguf_name == g.gguf) return g.hf;
  std::int64_t layer;
  std::string rest;
  if (!split_layer(gguf_name, "blk.", &layer, &rest)) return "";
  for (const auto& l : kLayerNames)
    if (rest == l.gguf) return "model.layers." + std::to_string(layer) + "." + l.hf;
  return "";
}

namespace {

torch::Tensor swap_halves(const torch::Tensor& w, std::int64_t n_head, bool forward) {
  if (w.dim() < 1 || n_head <= 0 || w.size(0) % (2 * n_head) != 0)
    throw Error("q/k permutation: " + std::to_string(w.dim() ? w.size(0) : 0) + " rows do not split into " +
                std::to_string(n_head) + " heads of an even size");
  const std::int64_t half = w.size(0) / n_head / 2;
  std::vector<std::int64_t> view = forward ? std::vector<std::int64_t>{n_head, 2, half}
                                           : std::vector<std::int64_t>{n_head, half, 2};
  for (std::int64_t d = 1; d < w.dim(); ++d) view.push_back(w.size(d));
  return w.reshape(view).transpose(1, 2).contiguous().reshape(w.sizes());
}

}  // namespace

torch::Tensor permute_qk(const torch::Tensor& w, std::int64_t n_head) { return swap_halves(w, n_head, true); }
torch::Tensor unpermute_qk(const torch::Tensor& w, std::int64_t n_head) { return swap_halves(w, n_head, false); }

// ---------------------------------------------------------------- export

void export_gguf(const std::string& model_dir, const std::string& out_path, const GgufExportOptions& opt) {
  const GgmlType wtype = export_type(opt.dtype);
  ModelConfig cfg;
  std::map<std::string, torch::Tensor> tensors;
  std::unique_ptr<Tokenizer> tok;
  if (is_gguf_file(model_dir)) {
    auto m = import_gguf(model_dir);
    cfg = m.config;
    tensors = std::move(m.tensors);
    tok = std::move(m.tokenizer);
  } else {
    cfg = load_model_config(model_dir);
    tok = std::make_unique<Tokenizer>(load_tokenizer(model_dir));
    tensors = load_model_tensors(model_dir);  // AWQ linears dequantized
  }
  const std::string arch = gguf_arch_for(cfg, model_dir);
  const bool permute = arch == "llama";  // qwen3 ropes halves, as HF does

  GgufWriter w;
  w.add_string("general.architecture", arch);
  w.add_string("general.name", model_name(model_dir));
  w.add_u32("general.file_type", file_type_of(wtype));
  if (ggml_is_quantized(wtype)) w.add_u32("general.quantization_version", 2);
  w.add_u32("general.alignment", kGgufDefaultAlignment);

  const std::string a = arch + ".";
  auto u32 = [](std::int64_t v) { return static_cast<std::uint32_t>(v); };
  w.add_u32(a + "vocab_size", u32(cfg.vocab_size));
  w.add_u32(a + "context_length", u32(cfg.max_position_embeddings));
  w.add_u32(a + "embedding_length", u32(cfg.hidden_size));
  w.add_u32(a + "block_count", u32(cfg.num_hidden_layers));
  w.add_u32(a + "feed_forward_length", u32(cfg.intermediate_size));
  w.add_u32(a + "rope.dimension_count", u32(cfg.head_dim));
  w.add_u32(a + "attention.head_count", u32(cfg.num_attention_heads));
  w.add_u32(a + "attention.head_count_kv", u32(cfg.num_key_value_heads));
  w.add_u32(a + "attention.key_length", u32(cfg.head_dim));
  w.add_u32(a + "attention.value_length", u32(cfg.head_dim));
  w.add_f32(a + "attention.layer_norm_rms_epsilon", static_cast<float>(cfg.rms_norm_eps));
  w.add_f32(a + "rope.freq_base", static_cast<float>(cfg.rope_theta));
  const auto& rs = cfg.rope_scaling;
  if (rs.type == "linear") {
    w.add_string(a + "rope.scaling.type", "linear");
    w.add_f32(a + "rope.scaling.factor", static_cast<float>(rs.factor));
  } else if (rs.type == "llama3" && arch != "llama") {
    throw Error(model_dir + ": Llama 3 rope scaling with per-head q/k norm has no llama.cpp architecture");
  } else if (!rs.type.empty() && rs.type != "llama3") {
    throw Error(model_dir + ": rope_scaling type '" + rs.type + "' is not supported by GGUF export (linear, llama3)");
  }
  // The model's sampling defaults, which llama.cpp's tools apply unless told otherwise.
  const auto& g = cfg.generation;
  w.add_f32("general.sampling.temp", static_cast<float>(g.effective_temperature()));
  w.add_f32("general.sampling.top_p", static_cast<float>(g.top_p));
  w.add_i32("general.sampling.top_k", static_cast<std::int32_t>(g.top_k));
  w.add_f32("general.sampling.min_p", static_cast<float>(g.min_p));
  w.add_f32("general.sampling.penalty_repeat", static_cast<float>(g.repetition_penalty));
  add_tokenizer(w, *tok, cfg, model_dir);

  // Tensors: each one checked now, converted while the file is written.
  std::set<std::string> used;
  std::int64_t fallbacks = 0;
  for (const auto& [hf, shape] : expected_tensors(cfg)) {
    auto it = tensors.find(hf);
    if (it == tensors.end()) throw Error(model_dir + ": tensor '" + hf + "' is missing");
    used.insert(hf);
    const torch::Tensor& src = it->second;
    if (src.sizes().vec() != shape)
      throw Error(model_dir + ": tensor '" + hf + "' has shape " + shape_text(src.sizes().vec()) + ", the config needs " +
                  shape_text(shape));
    const std::string name = gguf_tensor_name(hf);
    GgmlType type = GgmlType::F32;  // norms and biases stay exact
    if (shape.size() == 2) {
      type = wtype;
      if (ggml_is_quantized(type) && shape[1] % ggml_block_size(type) != 0) {
        log::warn(cat(name, ": rows of ", shape[1], " values are not a multiple of ", ggml_block_size(type),
                      ", written as F16 instead of ", ggml_type_name(type)));
        type = GgmlType::F16;
        ++fallbacks;
      }
    }
    std::int64_t heads = 0;
    if (permute && (ends_with(hf, "q_proj.weight") || ends_with(hf, "q_proj.bias"))) heads = cfg.num_attention_heads;
    if (permute && (ends_with(hf, "k_proj.weight") || ends_with(hf, "k_proj.bias"))) heads = cfg.num_key_value_heads;
    const std::int64_t cols = shape.back();
    const std::int64_t rows = shape.size() == 2 ? shape[0] : 1;
    w.add_tensor(name, shape, type, [src, heads, type, rows, cols](std::uint8_t* out) {
      torch::NoGradGuard ng;
      auto x = src.detach().to(torch::kCPU, torch::kFloat32);
      if (heads > 0) x = permute_qk(x, heads);
      x = x.contiguous();
      ggml_quantize(type, x.data_ptr<float>(), out, rows, cols);
    });
  }
  if (rs.type == "llama3") {
    const auto factors = llama3_rope_factors(cfg);
    std::vector<std::uint8_t> bytes(factors.size() * 4);
    std::memcpy(bytes.data(), factors.data(), bytes.size());
    w.add_tensor("rope_freqs.weight", {static_cast<std::int64_t>(factors.size())}, GgmlType::F32, std::move(bytes));
  }
  for (const auto& [name, t] : tensors) {
    if (used.count(name) || ends_with(name, "rotary_emb.inv_freq")) continue;
    if (name == "lm_head.weight" && cfg.tie_word_embeddings) continue;  // the embedding, again
    throw Error(model_dir + ": tensor '" + name + "' has no place in a " + arch + " GGUF");
  }
  if (fallbacks > 0) log::info(cat(fallbacks, " tensors kept in F16 (their rows do not split into blocks)"));

  const auto parent = fs::path(out_path).parent_path();
  if (!parent.empty()) fs::create_directories(parent);
  w.write(out_path);
}

// ---------------------------------------------------------------- import

bool is_gguf_file(const std::string& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return false;
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::memcmp(magic, "GGUF", 4) == 0;
}

ModelConfig gguf_model_config(const GgufFile& f) {
  const std::string& path = f.path();
  const std::string arch = f.get_string("general.architecture");
  if (arch != "llama" && arch != "qwen2" && arch != "qwen3")
    throw Error(path + ": GGUF architecture '" + arch + "' is not supported (llama, qwen2, qwen3)");
  const std::string a = arch + ".";
  ModelConfig c;
  c.model_type = arch == "llama" ? "llama" : arch;
  c.hidden_size = f.get_int(a + "embedding_length");
  c.num_hidden_layers = f.get_int(a + "block_count");
  c.intermediate_size = f.get_int(a + "feed_forward_length");
  c.num_attention_heads = f.get_int(a + "attention.head_count");
  c.num_key_value_heads = f.has(a + "attention.head_count_kv") ? f.get_int(a + "attention.head_count_kv")
                                                                : c.num_attention_heads;
  if (c.num_attention_heads <= 0) throw Error(path + ": " + a + "attention.head_count must be positive");
  c.head_dim = f.has(a + "attention.key_length")    ? f.get_int(a + "attention.key_length")
               : f.has(a + "rope.dimension_count") ? f.get_int(a + "rope.dimension_count")
                                                    : c.hidden_size / c.num_attention_heads;
  if (f.has(a + "attention.value_length") && f.get_int(a + "attention.value_length") != c.head_dim)
    throw Error(path + ": attention.value_length differs from key_length (not a model llmctl runs)");
  if (f.has(a + "rope.dimension_count") && f.get_int(a + "rope.dimension_count") != c.head_dim)
    throw Error(path + ": partial rotary embeddings (rope.dimension_count " +
                std::to_string(f.get_int(a + "rope.dimension_count")) + " < head size " + std::to_string(c.head_dim) +
                ") are not supported");
  c.max_position_embeddings = f.get_int(a + "context_length");
  c.rms_norm_eps = f.get_float(a + "attention.layer_norm_rms_epsilon");
  c.rope_theta = f.has(a + "rope.freq_base") ? f.get_float(a + "rope.freq_base") : 10000.0;
  if (f.has(a + "vocab_size"))
    c.vocab_size = f.get_int(a + "vocab_size");
  else if (f.has("tokenizer.ggml.tokens"))
    c.vocab_size = static_cast<std::int64_t>(f.get("tokenizer.ggml.tokens").items.size());
  else
    c.vocab_size = f.tensor("token_embd.weight").shape.at(0);

  c.tie_word_embeddings = !f.has_tensor("output.weight");
  c.attention_bias = f.has_tensor("blk.0.attn_q.bias");
  c.o_proj_bias = f.has_tensor("blk.0.attn_output.bias");
  c.mlp_bias = f.has_tensor("blk.0.ffn_gate.bias");
  c.qk_norm = arch == "qwen3";
  if (arch == "llama") {
    if (c.attention_bias && !c.o_proj_bias) {
      c.model_type = "qwen2";  // q/k/v biases only: HF's Qwen2 layout
      if (c.mlp_bias) throw Error(path + ": MLP biases with q/k/v-only attention biases have no HF counterpart");
    } else if (c.o_proj_bias && !c.attention_bias) {
      throw Error(path + ": an attn_output bias without q/k/v biases has no HF counterpart");
    }
  } else if (c.o_proj_bias || c.mlp_bias) {
    throw Error(path + ": " + arch + " GGUF with attn_output or FFN biases is not supported");
  } else if (arch == "qwen2" && !c.attention_bias) {
    c.model_type = "llama";  // no biases: plain Llama (both rope halves as HF does)
  }

  if (f.has(a + "rope.scaling.type")) {
    const auto& type = f.get_string(a + "rope.scaling.type");
    if (type == "linear") {
      c.rope_scaling.type = "linear";
      c.rope_scaling.factor = f.get_float(a + "rope.scaling.factor");
    } else if (type != "none") {
      throw Error(path + ": rope scaling '" + type + "' is not supported (linear, and Llama 3's rope_freqs)");
    }
  }
  if (f.has_tensor("rope_freqs.weight")) {
    if (arch != "llama") throw Error(path + ": rope_freqs.weight is only supported in llama GGUFs");
    const auto& t = f.tensor("rope_freqs.weight");
    std::vector<float> factors(static_cast<std::size_t>(t.numel()));
    f.read_f32("rope_freqs.weight", factors.data());
    c.rope_scaling = fit_llama3_rope(factors, c, path);
  }

  const std::string& model = f.has("tokenizer.ggml.model") ? f.get_string("tokenizer.ggml.model") : "";
  const bool spm = model == "llama";
  // llama.cpp's defaults for a sentencepiece vocab without the keys.
  const std::int64_t eos = f.has("tokenizer.ggml.eos_token_id") ? f.get_int("tokenizer.ggml.eos_token_id") : (spm ? 2 : -1);
  const std::int64_t bos = f.has("tokenizer.ggml.bos_token_id") ? f.get_int("tokenizer.ggml.bos_token_id") : (spm ? 1 : eos);
  if (eos < 0) throw Error(path + ": tokenizer.ggml.eos_token_id is missing (generation would never stop)");
  c.bos_token_id = bos;
  c.eos_token_ids = {eos};
  for (const char* key : {"tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    if (!f.has(key)) continue;
    const auto id = f.get_int(key);
    if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), id) == c.eos_token_ids.end()) c.eos_token_ids.push_back(id);
  }
  c.pad_token_id = f.has("tokenizer.ggml.padding_token_id") ? f.get_int("tokenizer.ggml.padding_token_id") : eos;
  c.torch_dtype = "float32";  // tensors come out dequantized

  // The sampling defaults the file carries (llama.cpp's general.sampling.*), else vLLM's.
  c.generation = GenerationDefaults{};
  if (f.has("general.sampling.temp")) {
    c.generation.temperature = f.get_float("general.sampling.temp");
    c.generation.do_sample = c.generation.temperature > 0;
    if (!c.generation.do_sample) c.generation.temperature = 1.0;
  }
  if (f.has("general.sampling.top_p")) c.generation.top_p = f.get_float("general.sampling.top_p");
  if (f.has("general.sampling.top_k")) c.generation.top_k = f.get_int("general.sampling.top_k");
  if (f.has("general.sampling.min_p")) c.generation.min_p = f.get_float("general.sampling.min_p");
  if (f.has("general.sampling.penalty_repeat"))
    c.generation.repetition_penalty = f.get_float("general.sampling.penalty_repeat");
  c.validate(path);
  return c;
}

Tokenizer gguf_tokenizer(const GgufFile& f) {
  const std::string& path = f.path();
  if (!f.has("tokenizer.ggml.model")) throw Error(path + ": no tokenizer (tokenizer.ggml.model is missing)");
  const std::string model = f.get_string("tokenizer.ggml.model");
  if (model != "llama" && model != "gpt2")
    throw Error(path + ": tokenizer.ggml.model '" + model + "' is not supported (llama, gpt2)");
  const auto tokens = f.get_string_array("tokenizer.ggml.tokens");
  const std::size_t n = tokens.size();
  std::vector<float> scores(n, 0.0f);
  if (f.has("tokenizer.ggml.scores")) scores = f.get_f32_array("tokenizer.ggml.scores");
  std::vector<std::int32_t> types(n, static_cast<std::int32_t>(TokenType::Normal));
  if (f.has("tokenizer.ggml.token_type")) types = f.get_i32_array("tokenizer.ggml.token_type");
  if (scores.size() != n || types.size() != n)
    throw Error(path + ": tokenizer.ggml.scores / token_type do not have one entry per token (" + std::to_string(n) + ")");
  std::vector<VocabEntry> vocab(n);
  for (std::size_t i = 0; i < n; ++i) {
    if (types[i] < 1 || types[i] > 6)
      throw Error(path + ": tokenizer.ggml.token_type[" + std::to_string(i) + "] = " + std::to_string(types[i]) +
                  " is not a token type (1-6)");
    vocab[i] = {tokens[i], scores[i], static_cast<TokenType>(types[i])};
  }
  const auto id = [&](const char* key, std::int64_t fallback) -> int {
    const std::int64_t v = f.has(key) ? f.get_int(key) : fallback;
    if (v >= static_cast<std::int64_t>(n)) throw Error(path + ": " + key + " = " + std::to_string(v) + " is not a token id");
    return static_cast<int>(v);
  };
  const bool spm = model == "llama";
  const int bos = id("tokenizer.ggml.bos_token_id", spm ? 1 : -1);
  const int eos = id("tokenizer.ggml.eos_token_id", spm ? 2 : -1);
  const int pad = id("tokenizer.ggml.padding_token_id", -1);
  auto tok = [&] {
    if (spm) {
      const int unk = id("tokenizer.ggml.unknown_token_id", 0);
      const bool space = f.has("tokenizer.ggml.add_space_prefix") ? f.get_bool("tokenizer.ggml.add_space_prefix") : true;
      return Tokenizer::from_sentencepiece_vocab(vocab, bos, eos, unk, pad, space);
    }
    if (!f.has("tokenizer.ggml.merges")) throw Error(path + ": a gpt2 tokenizer needs tokenizer.ggml.merges");
    const std::string pre = f.has("tokenizer.ggml.pre") ? f.get_string("tokenizer.ggml.pre") : "default";
    return Tokenizer::from_byte_level_bpe(vocab, f.get_string_array("tokenizer.ggml.merges"), pre, bos, eos, pad);
  }();
  if (f.has("tokenizer.ggml.add_bos_token")) tok.set_add_bos(f.get_bool("tokenizer.ggml.add_bos_token") && bos >= 0);
  if (f.has("tokenizer.chat_template")) tok.set_chat_template(f.get_string("tokenizer.chat_template"));
  return tok;
}

ModelConfig read_gguf_config(const std::string& path) { return gguf_model_config(GgufFile(path)); }

Tokenizer read_gguf_tokenizer(const std::string& path) { return gguf_tokenizer(GgufFile(path)); }

GgufModel import_gguf(const std::string& path) {
  GgufFile f(path);
  GgufModel m;
  m.config = gguf_model_config(f);
  m.tokenizer = std::make_unique<Tokenizer>(gguf_tokenizer(f));
  const auto& c = m.config;
  // Every tensor is checked against the config before anything is dequantized, so a
  // corrupt hyper-parameter is reported, not allocated.
  std::map<std::string, std::vector<std::int64_t>> expected;
  for (auto& [name, shape] : expected_tensors(c)) expected.emplace(gguf_tensor_name(name), std::move(shape));
  for (const auto& t : f.tensors()) {
    if (t.name == "rope_freqs.weight") continue;  // folded into the config's rope_scaling
    auto it = expected.find(t.name);
    if (it == expected.end())
      throw Error(path + ": tensor '" + t.name + "' is not part of the " + std::to_string(c.num_hidden_layers) +
                  "-layer model its metadata describes");
    if (t.shape != it->second)
      throw Error(path + ": tensor '" + t.name + "' has shape " + shape_text(t.shape) + ", the metadata needs " +
                  shape_text(it->second));
    expected.erase(it);
  }
  if (!expected.empty()) throw Error(path + ": tensor '" + expected.begin()->first + "' is missing");

  // Only llama.cpp's "llama" ropes interleaved pairs; qwen2 / qwen3 rope halves, as HF.
  const bool permuted = f.get_string("general.architecture") == "llama";
  for (const auto& t : f.tensors()) {
    if (t.name == "rope_freqs.weight") continue;
    auto x = torch::empty(t.shape, torch::kFloat32);
    f.read_f32(t.name, x.data_ptr<float>());
    std::int64_t heads = 0;
    if (permuted && (ends_with(t.name, "attn_q.weight") || ends_with(t.name, "attn_q.bias"))) heads = c.num_attention_heads;
    if (permuted && (ends_with(t.name, "attn_k.weight") || ends_with(t.name, "attn_k.bias"))) heads = c.num_key_value_heads;
    if (heads > 0) x = unpermute_qk(x, heads);
    m.tensors.emplace(hf_tensor_name(t.name), std::move(x));
  }
  return m;
}

}  // namespace llmctl
