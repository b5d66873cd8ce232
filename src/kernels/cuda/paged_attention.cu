#include <cmath>

#include "convert.cuh"
#include "paged_attention.cuh"

namespace llmctl::kernels::cuda {
namespace {

constexpr int kWarps = 4;  // warps per (query row, head): each takes every 4th key

// One cached row (one position of one kv head) as seen by a lane: element d in fp32.
template <typename T>
struct DenseKv {
  const T* data;
  struct Row {
    const T* p;
    __device__ float operator[](int d) const { return to_f32(p[d]); }
  };
  __device__ Row row(std::int64_t r, int head_dim) const { return {data + r * head_dim}; }
};

// int8 / int4 codes dequantised in registers: x = code * scale + zero.
template <int Bits>
struct QuantKv {
  const std::uint8_t* codes;
  const float* params;
  struct Row {
    const std::uint8_t* c;
    float scale, zero;
    __device__ float operator[](int d) const {
      const int code = Bits == 8 ? c[d] : (c[d >> 1] >> ((d & 1) * 4)) & 15;
      return static_cast<float>(code) * scale + zero;
    }
  };
  __device__ Row row(std::int64_t r, int head_dim) const {
    return {codes + r * (head_dim * Bits / 8), params[2 * r], params[2 * r + 1]};
  }
};

// One block per (query row, query head), kWarps warps. Lane l holds elements l, l+32, ...
// (PER of them) of the query and of its running output. Each warp walks its share of the
// keys with an online softmax (running max m, sum l); the warps' partial results are then
// merged through shared memory. GQA: head h reads kv head h / (heads / kv_heads) straight
// from the cache, so K/V are never repeated.
template <typename T, typename Kv, int PER>
__global__ void __launch_bounds__(kWarps * 32)
    paged_attention_kernel(const T* __restrict__ q, T* __restrict__ out, Kv k, Kv v,
                           const std::int32_t* __restrict__ query_start, const std::int32_t* __restrict__ context_lens,
                           const std::int32_t* __restrict__ block_tables, PagedShape sh) {
  const int t = blockIdx.x, h = blockIdx.y, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int D = sh.head_dim;

  // The sequence owning row t: the last s with query_start[s] <= t (sequences without new
  // rows share their start with the next one, so "last" skips them).
  int lo = 0, hi = sh.num_seqs - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) >> 1;
    if (query_start[mid] <= t) lo = mid; else hi = mid - 1;
  }
  const int s = lo;
  const int last_key = context_lens[s] - (query_start[s + 1] - t);  // this row's own position
  const int kv_head = h / (sh.heads / sh.kv_heads);
  const std::int32_t* table = block_tables + static_cast<std::int64_t>(s) * sh.max_blocks;

  const T* qrow = q + (static_cast<std::int64_t>(t) * sh.heads + h) * D;
  float qv[PER], acc[PER];
#pragma unroll
  for (int i = 0; i < PER; ++i) {
    const int d = lane + 32 * i;
    qv[i] = d < D ? to_f32(qrow[d]) * sh.scale : 0.f;
    acc[i] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int j = warp; j <= last_key; j += kWarps) {
    const std::int64_t r =
        (static_cast<std::int64_t>(table[j / sh.block_size]) * sh.kv_heads + kv_head) * sh.block_size +
        j % sh.block_size;
    const auto kr = k.row(r, D);
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < PER; ++i)
      if (lane + 32 * i < D) dot += qv[i] * kr[lane + 32 * i];
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, off);
    const float m_new = fmaxf(m, dot);
    const float correction = expf(m - m_new), p = expf(dot - m_new);
    l = l * correction + p;
    const auto vr = v.row(r, D);
#pragma unroll
    for (int i = 0; i < PER; ++i)
      if (lane + 32 * i < D) acc[i] = acc[i] * correction + p * vr[lane + 32 * i];
    m = m_new;
  }

  __shared__ float s_m[kWarps], s_l[kWarps], s_acc[kWarps][PER * 32];
  if (lane == 0) s_m[warp] = m, s_l[warp] = l;
#pragma unroll
  for (int i = 0; i < PER; ++i) s_acc[warp][lane + 32 * i] = acc[i];
  __syncthreads();
  float top = s_m[0];  // finite: warp 0 always has key 0
  for (int w = 1; w < kWarps; ++w) top = fmaxf(top, s_m[w]);
  float weight[kWarps], denom = 0.f;
  for (int w = 0; w < kWarps; ++w) {
    weight[w] = s_m[w] == -INFINITY ? 0.f : expf(s_m[w] - top);  // a warp that saw no key adds nothing
    denom += weight[w] * s_l[w];
  }
  T* orow = out + (static_cast<std::int64_t>(t) * sh.heads + h) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float num = 0.f;
    for (int w = 0; w < kWarps; ++w) num += weight[w] * s_acc[w][d];
    orow[d] = from_f32<T>(num / denom);
  }
}

template <typename T, typename Kv>
cudaError_t launch(const void* q, void* out, std::int64_t tokens, Kv k, Kv v, const std::int32_t* qs,
                   const std::int32_t* cl, const std::int32_t* bt, PagedShape sh, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(tokens), static_cast<unsigned>(sh.heads));
  auto run = [&](auto per) {
    paged_attention_kernel<T, Kv, decltype(per)::value><<<grid, kWarps * 32, 0, stream>>>(
        static_cast<const T*>(q), static_cast<T*>(out), k, v, qs, cl, bt, sh);
  };
  if (sh.head_dim <= 64) run(std::integral_constant<int, 2>{});
  else if (sh.head_dim <= 128) run(std::integral_constant<int, 4>{});
  else run(std::integral_constant<int, 8>{});
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_cache(const void* q, void* out, std::int64_t tokens, PagedKv k, PagedKv v, const std::int32_t* qs,
                         const std::int32_t* cl, const std::int32_t* bt, PagedShape sh, cudaStream_t stream) {
  auto codes = [](const PagedKv& c) { return static_cast<const std::uint8_t*>(c.data); };
  switch (k.bits) {
    case 0:
      return launch<T>(q, out, tokens, DenseKv<T>{static_cast<const T*>(k.data)},
                       DenseKv<T>{static_cast<const T*>(v.data)}, qs, cl, bt, sh, stream);
    case 8:
      return launch<T>(q, out, tokens, QuantKv<8>{codes(k), k.params}, QuantKv<8>{codes(v), v.params}, qs, cl, bt,
                       sh, stream);
    case 4:
      return launch<T>(q, out, tokens, QuantKv<4>{codes(k), k.params}, QuantKv<4>{codes(v), v.params}, qs, cl, bt,
                       sh, stream);
  }
  return cudaErrorInvalidValue;
}

// One warp per (token, kv head) row: min / max by warp shuffles, then each lane codes its
// elements. The arithmetic is spelled out with round-to-nearest intrinsics so no FMA
// contraction makes a code differ from the CPU's.
template <int Bits>
__global__ void write_quantized_kv_kernel(const float* __restrict__ x, const std::int64_t* __restrict__ slots,
                                          int kv_heads, int D, int block_size, std::uint8_t* __restrict__ codes,
                                          float* __restrict__ params) {
  constexpr int kMaxPerLane = 8;  // head_dim <= 256
  constexpr float kMaxCode = (1 << Bits) - 1;
  const int t = blockIdx.x, h = blockIdx.y, lane = threadIdx.x;
  const float* src = x + (static_cast<std::int64_t>(t) * kv_heads + h) * D;
  float v[kMaxPerLane], lo = INFINITY, hi = -INFINITY;
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    v[i] = d < D ? src[d] : 0.f;
    if (d < D) lo = fminf(lo, v[i]), hi = fmaxf(hi, v[i]);
  }
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) {
    lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, off));
    hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, off));
  }
  const float scale = __fdiv_rn(__fsub_rn(hi, lo), kMaxCode);
  const float inv = scale > 0.f ? __fdiv_rn(1.f, scale) : 0.f;
  const std::int64_t slot = slots[t];
  const std::int64_t r = (slot / block_size * kv_heads + h) * block_size + slot % block_size;
  std::uint8_t* dst = codes + r * (D * Bits / 8);
#pragma unroll
  for (int i = 0; i < kMaxPerLane; ++i) {
    const int d = lane + 32 * i;
    const int code = static_cast<int>(fminf(fmaxf(rintf(__fmul_rn(__fsub_rn(v[i], lo), inv)), 0.f), kMaxCode));
    if (Bits == 8) {
      if (d < D) dst[d] = static_cast<std::uint8_t>(code);
    } else {
      // Element 2j (an even lane) takes 2j+1 from the next lane: low and high nibble of byte j.
      const int high = __shfl_down_sync(0xffffffffu, code, 1);
      if (d < D && (lane & 1) == 0) dst[d >> 1] = static_cast<std::uint8_t>(code | high << 4);
    }
  }
  if (lane == 0) params[2 * r] = scale, params[2 * r + 1] = lo;
}

}  // namespace

cudaError_t write_quantized_kv(const float* x, const std::int64_t* slot_mapping, std::int64_t tokens, int kv_heads,
                               int head_dim, int block_size, int bits, std::uint8_t* codes, float* params,
                               cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  if (head_dim > 256 || head_dim % 2 != 0) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(tokens), static_cast<unsigned>(kv_heads));
  if (bits == 8)
    write_quantized_kv_kernel<8><<<grid, 32, 0, stream>>>(x, slot_mapping, kv_heads, head_dim, block_size, codes, params);
  else if (bits == 4)
    write_quantized_kv_kernel<4><<<grid, 32, 0, stream>>>(x, slot_mapping, kv_heads, head_dim, block_size, codes, params);
  else
    return cudaErrorInvalidValue;
  return cudaGetLastError();
}

cudaError_t paged_attention(const void* q, void* out, std::int64_t tokens, PagedKv k, PagedKv v,
                            const std::int32_t* query_start, const std::int32_t* context_lens,
                            const std::int32_t* block_tables, PagedShape shape, DType dtype, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  if (shape.head_dim > 256 || k.bits != v.bits) return cudaErrorInvalidValue;
  switch (dtype) {
    case DType::F32:
      return launch_cache<float>(q, out, tokens, k, v, query_start, context_lens, block_tables, shape, stream);
    case DType::F16:
      return launch_cache<__half>(q, out, tokens, k, v, query_start, context_lens, block_tables, shape, stream);
    case DType::BF16:
      return launch_cache<__nv_bfloat16>(q, out, tokens, k, v, query_start, context_lens, block_tables, shape,
                                         stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace llmctl::kernels::cuda
