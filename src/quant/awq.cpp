// AutoAWQ "gemm" storage: packing, the asymmetric int4 group quantizer, dequantization.
// (Owned by the quantize work, issue 7; the int4 kernels only consume these functions.)
#include "llmctl/quant/awq.h"

#include <sstream>

#include "llmctl/util/error.h"

namespace llmctl {

namespace {

// Shift of column c (0..7) within its word: 4 * (the nibble holding it), the inverse of kAwqOrder.
constexpr int kAwqShift[8] = {0, 16, 4, 20, 8, 24, 12, 28};

std::string shape_str(const torch::Tensor& t) {
  std::ostringstream s;
  s << t.sizes();
  return s.str();
}

struct GroupQuant {
  torch::Tensor q, zero, scale;  // [N, K/g, g], [N, K/g, 1], [N, K/g, 1] fp32 (scale fp16-exact)
};

void check_quant_shape(const torch::Tensor& w, int group_size, const char* fn) {
  if (!w.defined() || w.dim() != 2) throw Error(std::string(fn) + ": expected a 2-D weight [out, in]");
  if (!w.is_floating_point()) throw Error(std::string(fn) + ": the weight is not floating point");
  const auto N = w.size(0), K = w.size(1);
  if (group_size <= 0) throw Error(std::string(fn) + ": group size must be positive, got " + std::to_string(group_size));
  if (K == 0 || K % group_size != 0)
    throw Error(std::string(fn) + ": in_features " + std::to_string(K) + " is not a multiple of the group size " +
                std::to_string(group_size));
  if (N == 0 || N % 8 != 0)
    throw Error(std::string(fn) + ": out_features " + std::to_string(N) + " is not a multiple of 8");
}

// AutoAWQ's asymmetric int4 quantizer over groups of `g` input channels, in fp32 on w's device:
// scale = max(max - min, 1e-5) / 15, zero = clamp(-round(min / scale), 0, 15),
// q = clamp(round(w / scale) + zero, 0, 15), rounding half to even.
GroupQuant group_quant(const torch::Tensor& w, int g) {
  const auto N = w.size(0), K = w.size(1);
  auto x = w.detach().to(torch::kFloat32).reshape({N, K / g, g});
  auto mx = std::get<0>(x.max(-1, true)), mn = std::get<0>(x.min(-1, true));
  // The scale is stored in fp16: quantize with the rounded value so that (q - z) * s read back
  // from the file is exactly what was chosen here.
  auto scale = ((mx - mn).clamp_min(1e-5) / 15).to(torch::kFloat16).to(torch::kFloat32);
  auto zero = (-torch::round(mn / scale)).clamp(0, 15);
  auto q = (torch::round(x / scale) + zero).clamp(0, 15);  // torch::round: half to even
  return {q, zero, scale};
}

}  // namespace

torch::Tensor awq_pack(const torch::Tensor& q) {
  if (!q.defined() || q.dim() != 2) throw Error("awq_pack: expected a 2-D tensor of 4-bit values");
  if (q.is_floating_point() || q.is_complex() || q.scalar_type() == torch::kBool)
    throw Error("awq_pack: expected an integer tensor, got " + std::string(c10::toString(q.scalar_type())));
  const auto rows = q.size(0), cols = q.size(1);
  if (cols % 8 != 0) throw Error("awq_pack: " + std::to_string(cols) + " columns is not a multiple of 8");
  auto v = q.to(torch::kInt64).contiguous();
  if (v.numel() > 0 && (v.min().item<std::int64_t>() < 0 || v.max().item<std::int64_t>() > 15))
    throw Error("awq_pack: values must be in 0..15");
  v = v.view({rows, cols / 8, 8});
  auto word = torch::zeros({rows, cols / 8}, v.options());
  for (int c = 0; c < 8; ++c) word.bitwise_or_(v.select(2, c).bitwise_left_shift(kAwqShift[c]));
  // The words are unsigned 32-bit patterns; int32 wraps them (0x8ACE9BDF is negative).
  return word.to(torch::kInt32);
}

torch::Tensor awq_unpack(const torch::Tensor& packed) {
  if (!packed.defined() || packed.dim() != 2 || packed.scalar_type() != torch::kInt32)
    throw Error("awq_unpack: expected a 2-D int32 tensor");
  auto w = packed.contiguous();
  std::vector<torch::Tensor> cols;
  // Arithmetic shifts of negative words bring in ones above bit 31; the mask drops them.
  for (int c = 0; c < 8; ++c) cols.push_back(w.bitwise_right_shift(kAwqShift[c]).bitwise_and(15));
  return torch::stack(cols, 2).view({w.size(0), w.size(1) * 8});
}

AwqTensor awq_quantize(const torch::Tensor& w, int group_size) {
  check_quant_shape(w, group_size, "awq_quantize");
  torch::NoGradGuard no_grad;
  const auto N = w.size(0), K = w.size(1);
  auto x = w.detach().to(torch::kCPU, torch::kFloat32);
  if (!torch::isfinite(x).all().item<bool>()) throw Error("awq_quantize: the weight has non-finite values");
  auto gq = group_quant(x, group_size);
  AwqTensor t;
  t.group_size = group_size;
  t.qweight = awq_pack(gq.q.reshape({N, K}).t().to(torch::kInt32));
  t.qzeros = awq_pack(gq.zero.reshape({N, K / group_size}).t().to(torch::kInt32));
  t.scales = gq.scale.reshape({N, K / group_size}).t().to(torch::kFloat16).contiguous();
  return t;
}

torch::Tensor awq_fake_quantize(const torch::Tensor& w, int group_size) {
  check_quant_shape(w, group_size, "awq_fake_quantize");
  torch::NoGradGuard no_grad;
  auto gq = group_quant(w, group_size);
  return ((gq.q - gq.zero) * gq.scale).reshape(w.sizes());
}

void awq_check(const AwqTensor& t, const std::string& what) {
  auto fail = [&](const std::string& msg) { throw Error(what + ": " + msg); };
  if (!t.qweight.defined() || !t.qzeros.defined() || !t.scales.defined()) fail("qweight, qzeros and scales are all required");
  if (t.qweight.scalar_type() != torch::kInt32) fail("qweight must be int32, not " + std::string(c10::toString(t.qweight.scalar_type())));
  if (t.qzeros.scalar_type() != torch::kInt32) fail("qzeros must be int32, not " + std::string(c10::toString(t.qzeros.scalar_type())));
  if (t.scales.scalar_type() != torch::kFloat16) fail("scales must be float16, not " + std::string(c10::toString(t.scales.scalar_type())));
  if (t.qweight.dim() != 2 || t.qzeros.dim() != 2 || t.scales.dim() != 2) fail("qweight, qzeros and scales must be 2-D");
  const auto g = t.group_size;
  if (g <= 0) fail("group size must be positive");
  const auto K = t.qweight.size(0), N = t.scales.size(1);
  if (K == 0 || K % g != 0)
    fail("in_features " + std::to_string(K) + " (qweight rows) is not a multiple of the group size " + std::to_string(g));
  if (N == 0 || N % 8 != 0) fail("out_features " + std::to_string(N) + " (scales columns) is not a multiple of 8");
  const std::vector<std::int64_t> want_qw{K, N / 8}, want_qz{K / g, N / 8}, want_s{K / g, N};
  if (t.scales.sizes() != torch::IntArrayRef(want_s))
    fail("scales has shape " + shape_str(t.scales) + ", expected [" + std::to_string(K / g) + ", " + std::to_string(N) +
         "] for qweight " + shape_str(t.qweight) + " and group size " + std::to_string(g));
  if (t.qweight.sizes() != torch::IntArrayRef(want_qw))
    fail("qweight has shape " + shape_str(t.qweight) + ", expected [" + std::to_string(K) + ", " + std::to_string(N / 8) + "]");
  if (t.qzeros.sizes() != torch::IntArrayRef(want_qz))
    fail("qzeros has shape " + shape_str(t.qzeros) + ", expected [" + std::to_string(K / g) + ", " + std::to_string(N / 8) + "]");
}

torch::Tensor awq_dequantize(const AwqTensor& t) {
  awq_check(t, "awq_dequantize");
  torch::NoGradGuard no_grad;
  const auto K = t.in_features(), N = t.out_features(), g = static_cast<std::int64_t>(t.group_size);
  auto q = awq_unpack(t.qweight).to(torch::kFloat32).view({K / g, g, N});
  auto z = awq_unpack(t.qzeros).to(torch::kFloat32).unsqueeze(1);  // [K/g, 1, N]
  auto s = t.scales.to(torch::kFloat32).unsqueeze(1);              // [K/g, 1, N]
  return ((q - z) * s).view({K, N}).t().contiguous();
}

AwqTensor awq_concat_out(const std::vector<AwqTensor>& parts) {
  if (parts.empty()) throw Error("awq_concat_out: nothing to concatenate");
  std::vector<torch::Tensor> qw, qz, sc;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    const auto& p = parts[i];
    awq_check(p, "awq_concat_out: part " + std::to_string(i));
    if (p.group_size != parts[0].group_size || p.in_features() != parts[0].in_features())
      throw Error("awq_concat_out: part " + std::to_string(i) + " has in_features " + std::to_string(p.in_features()) +
                  " / group size " + std::to_string(p.group_size) + ", part 0 has " +
                  std::to_string(parts[0].in_features()) + " / " + std::to_string(parts[0].group_size));
    qw.push_back(p.qweight);
    qz.push_back(p.qzeros);
    sc.push_back(p.scales);
  }
  AwqTensor t;
  t.group_size = parts[0].group_size;
  t.qweight = torch::cat(qw, 1).contiguous();
  t.qzeros = torch::cat(qz, 1).contiguous();
  t.scales = torch::cat(sc, 1).contiguous();
  return t;
}

}  // namespace llmctl
