#include "llmctl/kernels/paged_attention.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "cpu/paged_attention_cpu.h"
#include "llmctl/build_config.h"
#include "llmctl/kernels/linear.h"
#include "llmctl/util/error.h"

#if LLMCTL_HAVE_CUDA
#include <c10/cuda/CUDAGuard.h>

#include "cuda/paged_attention.cuh"
#include "cuda/torch_side.h"
#endif

namespace llmctl::kernels {
namespace {

[[noreturn]] void fail(const std::string& fn, const std::string& what) { throw Error(fn + ": " + what); }

std::string shape_str(const torch::Tensor& t) {
  std::string s = "[";
  for (std::int64_t i = 0; i < t.dim(); ++i) s += (i ? ", " : "") + std::to_string(t.size(i));
  return s + "]";
}

// Metadata as read on the host (a no-op for CPU tensors).
torch::Tensor host_int32(const torch::Tensor& t) { return t.to(torch::kCPU).contiguous(); }

// Every shape, dtype and device rule of paged_attention.h, and every index the kernel will
// follow (query ranges, context lengths, block ids), so bad input fails here instead of
// reading outside a tensor.
// The structure of a KvCache (kernels/paged_attention.h); returns its head_dim.
std::int64_t check_cache(const std::string& fn, const KvCache& c, const char* name) {
  const auto& d = c.data;
  if (!d.defined() || d.dim() != 4)
    fail(fn, std::string(name) + " must be [num_blocks, kv_heads, block_size, head_dim]" +
                 (d.defined() ? ", got " + shape_str(d) : std::string()));
  if (!d.is_contiguous()) fail(fn, std::string(name) + " must be contiguous");
  if (c.bits == 0) return d.size(3);
  if (c.bits != 8 && c.bits != 4) fail(fn, std::string(name) + ": quantised caches have 8 or 4 bits");
  if (d.scalar_type() != torch::kUInt8) fail(fn, std::string(name) + ": quantised codes must be uint8");
  const auto& p = c.params;
  if (!p.defined() || p.scalar_type() != torch::kFloat32 || p.dim() != 4 || p.size(0) != d.size(0) ||
      p.size(1) != d.size(1) || p.size(2) != d.size(2) || p.size(3) != 2 || !p.is_contiguous() ||
      p.device() != d.device())
    fail(fn, std::string(name) + ": params must be contiguous fp32 [num_blocks, kv_heads, block_size, 2] beside " +
                 "the codes " + shape_str(d) + (p.defined() ? ", got " + shape_str(p) : std::string()));
  return d.size(3) * 8 / c.bits;
}

void check_attention_args(const torch::Tensor& q, const KvCache& kc, const KvCache& vc,
                          const torch::Tensor& query_start, const torch::Tensor& context_lens,
                          const torch::Tensor& block_tables) {
  const std::string fn = "paged_attention";
  if (q.dim() != 3) fail(fn, "q must be [tokens, heads, head_dim], got " + shape_str(q));
  const auto cache_dim = check_cache(fn, kc, "k_cache");
  check_cache(fn, vc, "v_cache");
  const auto &k_cache = kc.data, &v_cache = vc.data;
  if (kc.bits != vc.bits) fail(fn, "k_cache and v_cache must be quantised alike");
  if (!k_cache.sizes().equals(v_cache.sizes()))
    fail(fn, "v_cache " + shape_str(v_cache) + " differs from k_cache " + shape_str(k_cache));
  const auto heads = q.size(1), head_dim = q.size(2), kv_heads = k_cache.size(1);
  if (cache_dim != head_dim)
    fail(fn, "head_dim of q (" + std::to_string(head_dim) + ") and of the cache (" + std::to_string(cache_dim) +
                 ") differ");
  if (kv_heads < 1 || heads % kv_heads != 0)
    fail(fn, std::to_string(heads) + " query heads are not a multiple of " + std::to_string(kv_heads) + " kv heads");
  if (head_dim < 2 || head_dim % 2 != 0 || head_dim > 256)
    fail(fn, "head_dim must be even and at most 256, got " + std::to_string(head_dim));
  if (k_cache.size(2) < 1) fail(fn, "block_size must be positive");
  const auto dt = q.scalar_type();
  if (!at::isFloatingType(dt)) fail(fn, "q must be floating point, got " + std::string(c10::toString(dt)));
  if (kc.bits == 0 && (k_cache.scalar_type() != dt || v_cache.scalar_type() != dt))
    fail(fn, "k_cache / v_cache must have q's dtype " + std::string(c10::toString(dt)));
  if (k_cache.device() != q.device() || v_cache.device() != q.device())
    fail(fn, "q, k_cache and v_cache must be on one device");
  for (const auto* t : {&query_start, &context_lens, &block_tables})
    if (t->scalar_type() != torch::kInt32) fail(fn, "query_start, context_lens and block_tables must be int32");
  if (context_lens.dim() != 1) fail(fn, "context_lens must be [num_seqs], got " + shape_str(context_lens));
  const auto S = context_lens.size(0);
  if (query_start.dim() != 1 || query_start.size(0) != S + 1)
    fail(fn, "query_start must be [num_seqs + 1] = [" + std::to_string(S + 1) + "], got " + shape_str(query_start));
  if (block_tables.dim() != 2 || block_tables.size(0) != S)
    fail(fn, "block_tables must be [num_seqs, max_blocks] with num_seqs = " + std::to_string(S) + ", got " +
                 shape_str(block_tables));

  const auto qs_t = host_int32(query_start), cl_t = host_int32(context_lens), bt_t = host_int32(block_tables);
  const auto* qs = qs_t.data_ptr<std::int32_t>();
  const auto* cl = cl_t.data_ptr<std::int32_t>();
  const auto* bt = bt_t.data_ptr<std::int32_t>();
  const auto num_blocks = k_cache.size(0), block_size = k_cache.size(2), max_blocks = block_tables.size(1);
  if (qs[0] != 0 || qs[S] != q.size(0))
    fail(fn, "query_start must run from 0 to the " + std::to_string(q.size(0)) + " rows of q");
  for (std::int64_t s = 0; s < S; ++s) {
    const auto n = static_cast<std::int64_t>(qs[s + 1]) - qs[s];
    const std::string seq = "sequence " + std::to_string(s);
    if (n < 0) fail(fn, "query_start must not decrease (" + seq + ")");
    if (n > cl[s])
      fail(fn, seq + " has " + std::to_string(n) + " query rows but a context of " + std::to_string(cl[s]));
    const auto used = (static_cast<std::int64_t>(cl[s]) + block_size - 1) / block_size;
    if (used > max_blocks)
      fail(fn, seq + ": a context of " + std::to_string(cl[s]) + " needs " + std::to_string(used) +
                   " blocks, block_tables has " + std::to_string(max_blocks));
    for (std::int64_t b = 0; b < used; ++b)
      if (bt[s * max_blocks + b] < 0 || bt[s * max_blocks + b] >= num_blocks)
        fail(fn, seq + " refers to block " + std::to_string(bt[s * max_blocks + b]) + " of a cache of " +
                     std::to_string(num_blocks));
  }
}

// A work item covers at most about this many query rows (tokens x heads of a group): long
// prefills split into several items so both threads share one sequence, while each item
// still reuses every K/V tile it loads across many rows.
constexpr std::int64_t kRowsPerItem = 128;

template <typename T, typename Rows>
void run_cpu(const torch::Tensor& q, const Rows& kp, const Rows& vp, const torch::Tensor& k_cache,
             const torch::Tensor& query_start, const torch::Tensor& context_lens, const torch::Tensor& block_tables,
             double scale, torch::Tensor& out) {
  const auto* qs = query_start.data_ptr<std::int32_t>();
  const auto* cl = context_lens.data_ptr<std::int32_t>();
  const auto* bt = block_tables.data_ptr<std::int32_t>();
  const auto S = context_lens.size(0), max_blocks = block_tables.size(1);
  const cpu::PagedAttentionShape shape{q.size(1), k_cache.size(1), q.size(2), k_cache.size(2),
                                       static_cast<float>(scale)};
  const auto group = shape.heads / shape.kv_heads;
  const auto chunk = std::max<std::int64_t>(1, kRowsPerItem / group);

  std::vector<cpu::PagedAttentionItem> items;
  std::vector<double> cost;
  for (std::int64_t s = 0; s < S; ++s) {
    const std::int64_t n = qs[s + 1] - qs[s], first = cl[s] - n;
    for (std::int64_t c = 0; c < n; c += chunk) {
      const auto rows = std::min(chunk, n - c);
      for (std::int64_t h = 0; h < shape.kv_heads; ++h) {
        items.push_back({qs[s] + c, qs[s] + c + rows, first + c, h, bt + s * max_blocks});
        cost.push_back(static_cast<double>(rows) * static_cast<double>(first + c + rows));  // rows x keys
      }
    }
  }
  // Costliest first, then each thread takes the next item when it finishes one: causal
  // prefill chunks differ a lot in cost, so a static split would leave a thread idle.
  std::vector<std::size_t> order(items.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return cost[a] > cost[b]; });
  std::atomic<std::size_t> next{0};
  const T* qp = q.data_ptr<T>();
  T* op = out.data_ptr<T>();
  const auto workers = std::min<std::int64_t>(at::get_num_threads(), static_cast<std::int64_t>(items.size()));
  at::parallel_for(0, workers, 1, [&](std::int64_t, std::int64_t) {
    std::vector<float> scratch;
    // Each thread claims its next item before running the current one, so the kernel can
    // prefetch the next item's cache while it finishes this one.
    for (std::size_t i = next.fetch_add(1), j; i < order.size(); i = j) {
      j = next.fetch_add(1);
      cpu::paged_attention_item(qp, kp, vp, op, shape, items[order[i]], j < order.size() ? &items[order[j]] : nullptr,
                                scratch);
    }
  });
}

// The reference on checked arguments: each sequence's K/V gathered densely (and repeated per
// query head), causal softmax attention from torch ops, in fp32. Runs on any device.
torch::Tensor reference_attention(const torch::Tensor& q, const KvCache& k_cache, const KvCache& v_cache,
                                  const torch::Tensor& query_start, const torch::Tensor& context_lens,
                                  const torch::Tensor& block_tables, double scale) {
  const auto qs_t = host_int32(query_start), cl_t = host_int32(context_lens), bt_t = host_int32(block_tables);
  const auto* qs = qs_t.data_ptr<std::int32_t>();
  const auto* cl = cl_t.data_ptr<std::int32_t>();
  const auto H = q.size(1), D = q.size(2), KVH = k_cache.data.size(1), bs = k_cache.data.size(2);
  auto out = torch::empty_like(q, torch::MemoryFormat::Contiguous);
  for (std::int64_t s = 0; s < context_lens.size(0); ++s) {
    const std::int64_t n = qs[s + 1] - qs[s], ctx = cl[s];
    if (n == 0) continue;
    // The sequence's K/V in position order: [kv_heads, ctx, D], then repeated per query head.
    const auto blocks = bt_t[s].narrow(0, 0, (ctx + bs - 1) / bs).to(torch::kInt64).to(q.device());
    auto dense = [&](const KvCache& cache) {
      const auto values = cache.quantized() ? dequantize_kv(cache.data.index_select(0, blocks),
                                                            cache.params.index_select(0, blocks), cache.bits)
                                            : cache.data.index_select(0, blocks);
      return values.permute({1, 0, 2, 3}).reshape({KVH, -1, D}).narrow(1, 0, ctx)
          .to(torch::kFloat32).repeat_interleave(H / KVH, 0);
    };
    const auto k = dense(k_cache), v = dense(v_cache);
    const auto qf = q.narrow(0, qs[s], n).to(torch::kFloat32).transpose(0, 1);  // [H, n, D]
    auto scores = torch::matmul(qf, k.transpose(1, 2)) * scale;                 // [H, n, ctx]
    // Query i sits at position ctx - n + i and sees keys 0 .. ctx - n + i.
    const auto opts = torch::TensorOptions().dtype(torch::kInt64).device(q.device());
    const auto query_pos = torch::arange(ctx - n, ctx, opts).unsqueeze(1);
    scores.masked_fill_(torch::arange(ctx, opts).unsqueeze(0) > query_pos, -INFINITY);
    const auto o = torch::matmul(torch::softmax(scores, -1), v).transpose(0, 1);  // [n, H, D]
    out.narrow(0, qs[s], n).copy_(o);
  }
  return out;
}

template <typename T>
void run_cpu_cache(const torch::Tensor& q, const KvCache& k, const KvCache& v, const torch::Tensor& query_start,
                   const torch::Tensor& context_lens, const torch::Tensor& block_tables, double scale,
                   torch::Tensor& out) {
  auto quant = [&](const KvCache& c) {
    return std::pair(c.data.data_ptr<std::uint8_t>(), static_cast<const float*>(c.params.data_ptr<float>()));
  };
  switch (k.bits) {
    case 0:
      return run_cpu<T>(q, cpu::DenseRows<T>{k.data.data_ptr<T>()}, cpu::DenseRows<T>{v.data.data_ptr<T>()}, k.data,
                        query_start, context_lens, block_tables, scale, out);
    case 8: {
      const auto [kc, kpar] = quant(k);
      const auto [vc, vpar] = quant(v);
      return run_cpu<T>(q, cpu::QuantRows<8>{kc, kpar}, cpu::QuantRows<8>{vc, vpar}, k.data, query_start,
                        context_lens, block_tables, scale, out);
    }
    default: {
      const auto [kc, kpar] = quant(k);
      const auto [vc, vpar] = quant(v);
      return run_cpu<T>(q, cpu::QuantRows<4>{kc, kpar}, cpu::QuantRows<4>{vc, vpar}, k.data, query_start,
                        context_lens, block_tables, scale, out);
    }
  }
}

#if LLMCTL_HAVE_CUDA
// CUDA q (fp32 / fp16 / bf16) on checked arguments: the metadata goes to the device (the
// engine keeps it on the host, where the checks read it without a device sync).
torch::Tensor run_cuda(const torch::Tensor& q, const KvCache& k, const KvCache& v, const torch::Tensor& query_start,
                       const torch::Tensor& context_lens, const torch::Tensor& block_tables, double scale,
                       const torch::Tensor& packed) {
  c10::cuda::CUDAGuard guard(q.device());
  const auto qc = q.contiguous();
  auto out = torch::empty_like(qc);
  if (qc.numel() == 0) return out;
  const auto S = context_lens.size(0);
  if (packed.defined() && (packed.device() != q.device() || packed.scalar_type() != torch::kInt32 ||
                           !packed.is_contiguous() || packed.numel() != 2 * S + 1 + block_tables.numel()))
    fail("paged_attention", "the packed metadata does not match query_start, context_lens and block_tables on q's "
                            "device");
  const auto meta = packed.defined() ? packed
                                     : pack_attention_metadata(query_start, context_lens, block_tables, q.device());
  const auto* qs = meta.data_ptr<std::int32_t>();
  const auto* cl = qs + S + 1;
  const auto* bt = cl + S;
  const auto cache = [](const KvCache& c) {
    return cuda::PagedKv{c.data.data_ptr(), c.quantized() ? c.params.data_ptr<float>() : nullptr, c.bits};
  };
  const auto& kd = k.data;
  const cuda::PagedShape shape{static_cast<int>(q.size(1)), static_cast<int>(kd.size(1)),
                               static_cast<int>(q.size(2)), static_cast<int>(kd.size(2)),
                               static_cast<int>(S),         static_cast<int>(block_tables.size(1)),
                               static_cast<float>(scale)};
  cuda::check_launch(cuda::paged_attention(qc.data_ptr(), out.data_ptr(), qc.size(0), cache(k), cache(v),
                                           qs, cl, bt, shape, cuda::dtype_of(qc),
                                           cuda::current_stream()),
                     "paged_attention");
  return out;
}
#endif

enum class Kernel { Cpu, Cuda, Reference };

// The kernel for q's device and dtype; the torch-ops reference for anything they lack.
Kernel kernel_for(const torch::Tensor& q) {
  const auto dt = q.scalar_type();
  if (q.device().is_cpu()) return dt == torch::kFloat32 || dt == torch::kBFloat16 ? Kernel::Cpu : Kernel::Reference;
#if LLMCTL_HAVE_CUDA
  if (q.is_cuda() && (dt == torch::kFloat32 || dt == torch::kFloat16 || dt == torch::kBFloat16)) return Kernel::Cuda;
#endif
  return Kernel::Reference;
}

}  // namespace

int kv_cache_bits(const std::string& kv_dtype) {
  if (kv_dtype.empty() || kv_dtype == "auto") return 0;
  if (kv_dtype == "int8") return 8;
  if (kv_dtype == "int4") return 4;
  throw Error("unknown KV cache dtype '" + kv_dtype + "' (expected auto, int8 or int4)");
}

std::int64_t kv_cache_block_bytes(std::int64_t kv_heads, std::int64_t block_size, std::int64_t head_dim,
                                  torch::ScalarType dtype, int bits) {
  const auto rows = kv_heads * block_size;
  if (bits == 0) return rows * head_dim * static_cast<std::int64_t>(c10::elementSize(dtype));
  return rows * (head_dim * bits / 8 + 2 * static_cast<std::int64_t>(sizeof(float)));
}

KvCache empty_kv_cache(std::int64_t num_blocks, std::int64_t kv_heads, std::int64_t block_size,
                       std::int64_t head_dim, torch::ScalarType dtype, int bits, const torch::Device& device) {
  if (bits != 0 && bits != 8 && bits != 4) throw Error("empty_kv_cache: bits must be 0, 8 or 4");
  if (bits != 0 && head_dim % 2 != 0) throw Error("empty_kv_cache: a quantised cache needs an even head_dim");
  // On the CPU not zeroed: attention only reads positions that were written (tested with NaN
  // filling the rest), and untouched pages then cost neither startup time nor memory.
  auto make = [&](std::int64_t last, torch::ScalarType t) {
    const std::vector<std::int64_t> shape{num_blocks, kv_heads, block_size, last};
    return device.is_cpu() ? empty_huge_pages(shape, t) : torch::zeros(shape, torch::TensorOptions(t).device(device));
  };
  KvCache c;
  c.bits = bits;
  if (bits == 0) {
    c.data = make(head_dim, dtype);
  } else {
    c.data = make(head_dim * bits / 8, torch::kUInt8);
    c.params = make(2, torch::kFloat32);
  }
  return c;
}

std::pair<torch::Tensor, torch::Tensor> quantize_kv(const torch::Tensor& x, int bits) {
  if (bits != 8 && bits != 4) throw Error("quantize_kv: bits must be 8 or 4");
  if (x.dim() < 1 || x.size(-1) % 2 != 0) throw Error("quantize_kv: the last dim must be even");
  const auto xf = x.to(torch::kFloat32);
  const auto lo = xf.amin(-1, true), hi = xf.amax(-1, true);
  const auto scale = (hi - lo) / static_cast<double>((1 << bits) - 1);
  const auto inv = torch::where(scale > 0, scale.reciprocal(), torch::zeros_like(scale));
  auto codes = ((xf - lo) * inv).round().clamp(0, (1 << bits) - 1).to(torch::kUInt8);
  if (bits == 4) {
    auto pairs = codes.unflatten(-1, {codes.size(-1) / 2, 2});
    codes = pairs.select(-1, 0).bitwise_or(pairs.select(-1, 1).bitwise_left_shift(4));
  }
  return {codes.contiguous(), torch::cat({scale, lo}, -1).contiguous()};
}

torch::Tensor dequantize_kv(const torch::Tensor& codes, const torch::Tensor& params, int bits) {
  if (bits != 8 && bits != 4) throw Error("dequantize_kv: bits must be 8 or 4");
  auto c = codes;
  if (bits == 4) {
    auto low = c.bitwise_and(15), high = c.bitwise_right_shift(4);
    c = torch::stack({low, high}, -1).flatten(-2);
  }
  return c.to(torch::kFloat32) * params.select(-1, 0).unsqueeze(-1) + params.select(-1, 1).unsqueeze(-1);
}

torch::Tensor kv_cache_values(const KvCache& cache) {
  return cache.quantized() ? dequantize_kv(cache.data, cache.params, cache.bits) : cache.data.to(torch::kFloat32);
}

torch::Tensor pack_attention_metadata(const torch::Tensor& query_start, const torch::Tensor& context_lens,
                                      const torch::Tensor& block_tables, const torch::Device& device) {
  return torch::cat({host_int32(query_start).flatten(), host_int32(context_lens).flatten(),
                     host_int32(block_tables).flatten()})
      .to(device);
}

torch::Tensor paged_attention(const torch::Tensor& q, const KvCache& k_cache, const KvCache& v_cache,
                              const torch::Tensor& query_start, const torch::Tensor& context_lens,
                              const torch::Tensor& block_tables, double scale, const torch::Tensor& packed_on_device) {
  check_attention_args(q, k_cache, v_cache, query_start, context_lens, block_tables);
  const auto kernel = kernel_for(q);
#if LLMCTL_HAVE_CUDA
  if (kernel == Kernel::Cuda)
    return run_cuda(q, k_cache, v_cache, query_start, context_lens, block_tables, scale, packed_on_device);
#else
  (void)packed_on_device;
#endif
  if (kernel != Kernel::Cpu)
    return reference_attention(q, k_cache, v_cache, query_start, context_lens, block_tables, scale);
  const auto dt = q.scalar_type();
  auto qc = q.contiguous();
  auto out = torch::empty_like(qc);
  if (qc.numel() == 0) return out;
  const auto qs = host_int32(query_start), cl = host_int32(context_lens), bt = host_int32(block_tables);
  if (dt == torch::kFloat32)
    run_cpu_cache<float>(qc, k_cache, v_cache, qs, cl, bt, scale, out);
  else
    run_cpu_cache<c10::BFloat16>(qc, k_cache, v_cache, qs, cl, bt, scale, out);
  return out;
}

torch::Tensor paged_attention(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache,
                              const torch::Tensor& query_start, const torch::Tensor& context_lens,
                              const torch::Tensor& block_tables, double scale) {
  return paged_attention(q, KvCache{k_cache, {}, 0}, KvCache{v_cache, {}, 0}, query_start, context_lens,
                         block_tables, scale);
}

torch::Tensor paged_attention_reference(const torch::Tensor& q, const KvCache& k_cache, const KvCache& v_cache,
                                        const torch::Tensor& query_start, const torch::Tensor& context_lens,
                                        const torch::Tensor& block_tables, double scale) {
  check_attention_args(q, k_cache, v_cache, query_start, context_lens, block_tables);
  return reference_attention(q, k_cache, v_cache, query_start, context_lens, block_tables, scale);
}

torch::Tensor paged_attention_reference(const torch::Tensor& q, const torch::Tensor& k_cache,
                                        const torch::Tensor& v_cache, const torch::Tensor& query_start,
                                        const torch::Tensor& context_lens, const torch::Tensor& block_tables,
                                        double scale) {
  return paged_attention_reference(q, KvCache{k_cache, {}, 0}, KvCache{v_cache, {}, 0}, query_start, context_lens,
                                   block_tables, scale);
}

namespace {

// One (token, kv head) row of D values into codes and (scale, zero): the scheme of
// quantize_kv, on the CPU.
template <int Bits>
void quantize_row(const float* x, std::int64_t D, std::uint8_t* codes, float* params) {
  float lo = x[0], hi = x[0];
  for (std::int64_t d = 1; d < D; ++d) lo = std::min(lo, x[d]), hi = std::max(hi, x[d]);
  constexpr int qmax = (1 << Bits) - 1;
  const float scale = (hi - lo) / static_cast<float>(qmax);
  const float inv = scale > 0 ? 1.0f / scale : 0.0f;
  auto code = [&](std::int64_t d) {
    const float c = std::nearbyint((x[d] - lo) * inv);  // round half to even, like torch::round
    return static_cast<std::uint8_t>(std::clamp(c, 0.0f, static_cast<float>(qmax)));
  };
  if constexpr (Bits == 8) {
    for (std::int64_t d = 0; d < D; ++d) codes[d] = code(d);
  } else {
    for (std::int64_t i = 0; i < D / 2; ++i) codes[i] = static_cast<std::uint8_t>(code(2 * i) | code(2 * i + 1) << 4);
  }
  params[0] = scale;
  params[1] = lo;
}

}  // namespace

void write_kv_cache(const torch::Tensor& k, const torch::Tensor& v, KvCache& k_cache, KvCache& v_cache,
                    const torch::Tensor& slot_mapping, const torch::Tensor& slots_on_device) {
  const std::string fn = "write_kv_cache";
  if (k.dim() != 3) fail(fn, "k must be [tokens, kv_heads, head_dim], got " + shape_str(k));
  if (!k.sizes().equals(v.sizes())) fail(fn, "v " + shape_str(v) + " differs from k " + shape_str(k));
  const auto D = check_cache(fn, k_cache, "k_cache");
  check_cache(fn, v_cache, "v_cache");
  if (k_cache.bits != v_cache.bits || !k_cache.data.sizes().equals(v_cache.data.sizes()))
    fail(fn, "k_cache and v_cache must both be [num_blocks, kv_heads, block_size, head_dim] and quantised alike, got " +
                 shape_str(k_cache.data) + " and " + shape_str(v_cache.data));
  const auto& kd = k_cache.data;
  if (k.size(1) != kd.size(1) || k.size(2) != D)
    fail(fn, "k " + shape_str(k) + " does not fit a cache of " + shape_str(kd));
  if (!at::isFloatingType(k.scalar_type()) || !at::isFloatingType(v.scalar_type()))
    fail(fn, "k and v must be floating point");
  if (kd.scalar_type() != v_cache.data.scalar_type()) fail(fn, "k_cache and v_cache must have one dtype");
  if (kd.device() != v_cache.data.device() || k.device() != kd.device() || v.device() != kd.device())
    fail(fn, "k, v and the caches must be on one device");
  if (slot_mapping.scalar_type() != torch::kInt64 || slot_mapping.dim() != 1 || slot_mapping.size(0) != k.size(0))
    fail(fn, "slot_mapping must be int64 [" + std::to_string(k.size(0)) + "], got " +
                 std::string(c10::toString(slot_mapping.scalar_type())) + " " + shape_str(slot_mapping));
  const auto N = k.size(0), KVH = kd.size(1), bs = kd.size(2);
  if (N == 0) return;
  const auto slots = slot_mapping.to(torch::kCPU).contiguous();
  const auto* sp = slots.data_ptr<std::int64_t>();
  const auto capacity = kd.size(0) * bs;
  for (std::int64_t i = 0; i < N; ++i)
    if (sp[i] < 0 || sp[i] >= capacity)
      fail(fn, "slot " + std::to_string(sp[i]) + " is outside the cache's " + std::to_string(capacity) + " slots");

  const bool quant = k_cache.quantized();
  if (slots_on_device.defined() &&
      (slots_on_device.device() != kd.device() || slots_on_device.scalar_type() != torch::kInt64 ||
       !slots_on_device.is_contiguous() || slots_on_device.numel() != N))
    fail(fn, "slots_on_device must be the int64 slot_mapping on the caches' device");
  // The slots where the cache is (a copy unless the caller made one).
  const auto dev_slots = kd.device().is_cpu() ? slots
                         : slots_on_device.defined() ? slots_on_device
                                                     : slot_mapping.to(kd.device()).contiguous();
#if LLMCTL_HAVE_CUDA
  if (quant && kd.is_cuda()) {  // one kernel per cache instead of ~15 torch ops each
    c10::cuda::CUDAGuard guard(kd.device());
    for (auto [x, c] : {std::pair{&k, &k_cache}, std::pair{&v, &v_cache}}) {
      const auto xf = x->to(torch::kFloat32).contiguous();
      cuda::check_launch(cuda::write_quantized_kv(xf.data_ptr<float>(), dev_slots.data_ptr<std::int64_t>(), N,
                                                  static_cast<int>(KVH), static_cast<int>(D), static_cast<int>(bs),
                                                  c->bits, c->data.data_ptr<std::uint8_t>(),
                                                  c->params.data_ptr<float>(), cuda::current_stream()),
                         "write_kv_cache");
    }
    return;
  }
#endif
  if (!kd.device().is_cpu()) {
    // cache[block, :, row] is [N, kv_heads, last dim], the shape of k (of its codes).
    const auto block = dev_slots.div(bs, "floor"), row = dev_slots.remainder(bs);
    using torch::indexing::Slice;
    for (auto [x, c] : {std::pair{&k, &k_cache}, std::pair{&v, &v_cache}}) {
      if (quant) {
        const auto [codes, params] = quantize_kv(*x, c->bits);
        c->data.index_put_({block, Slice(), row}, codes);
        c->params.index_put_({block, Slice(), row}, params);
      } else {
        c->data.index_put_({block, Slice(), row}, x->to(kd.scalar_type()));
      }
    }
    return;
  }
  // On the CPU a row per (token, kv head): a decode step writes a handful of rows, where
  // index_put_'s setup would cost more than the copy.
  if (quant) {
    const auto kf = k.to(torch::kFloat32).contiguous(), vf = v.to(torch::kFloat32).contiguous();
    const auto code_bytes = kd.size(3);
    for (auto [x, c] : {std::pair{&kf, &k_cache}, std::pair{&vf, &v_cache}}) {
      const float* src = x->data_ptr<float>();
      auto* codes = c->data.data_ptr<std::uint8_t>();
      auto* params = c->params.data_ptr<float>();
      for (std::int64_t i = 0; i < N; ++i)
        for (std::int64_t h = 0; h < KVH; ++h) {
          const auto r = ((sp[i] / bs) * KVH + h) * bs + sp[i] % bs;
          if (c->bits == 8)
            quantize_row<8>(src + (i * KVH + h) * D, D, codes + r * code_bytes, params + 2 * r);
          else
            quantize_row<4>(src + (i * KVH + h) * D, D, codes + r * code_bytes, params + 2 * r);
        }
    }
    return;
  }
  const auto kc = k.to(kd.scalar_type()).contiguous(), vc = v.to(kd.scalar_type()).contiguous();
  const auto row_bytes = static_cast<std::size_t>(D) * kd.element_size();
  auto* kdst = static_cast<char*>(kd.data_ptr());
  auto* vdst = static_cast<char*>(v_cache.data.data_ptr());
  const auto* ksrc = static_cast<const char*>(kc.data_ptr());
  const auto* vsrc = static_cast<const char*>(vc.data_ptr());
  for (std::int64_t i = 0; i < N; ++i)
    for (std::int64_t h = 0; h < KVH; ++h) {
      const auto dst = static_cast<std::size_t>(((sp[i] / bs) * KVH + h) * bs + sp[i] % bs) * row_bytes;
      const auto src = static_cast<std::size_t>(i * KVH + h) * row_bytes;
      std::memcpy(kdst + dst, ksrc + src, row_bytes);
      std::memcpy(vdst + dst, vsrc + src, row_bytes);
    }
}

void write_kv_cache(const torch::Tensor& k, const torch::Tensor& v, torch::Tensor& k_cache, torch::Tensor& v_cache,
                    const torch::Tensor& slot_mapping) {
  KvCache kc{k_cache, {}, 0}, vc{v_cache, {}, 0};
  write_kv_cache(k, v, kc, vc, slot_mapping);
}

}  // namespace llmctl::kernels
