// Standalone check of the AWQ w4a16 CUDA kernels (src/kernels/cuda/awq_gemm.cu) against a
// host reference on the dequantized weights, with timings; for a GPU machine without the
// project's other dependencies (the GoogleTest Int4Cuda test covers the same through torch):
//   nvcc -O3 -std=c++17 -arch=native tests/cuda/awq_gemm_check.cu src/kernels/cuda/awq_gemm.cu -o awq_check && ./awq_check
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "../../src/kernels/cuda/awq_gemm.cuh"

using namespace llmctl::kernels::cuda;

#define CHECK(x)                                                                  \
  do {                                                                            \
    cudaError_t e = (x);                                                          \
    if (e != cudaSuccess) {                                                       \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(e), __FILE__, __LINE__); \
      std::exit(1);                                                               \
    }                                                                             \
  } while (0)

static const int kOrder[8] = {0, 2, 4, 6, 1, 3, 5, 7};  // nibble i holds column 8j + kOrder[i]

static int run(int m, int n, int k, int group, DType dt, std::mt19937& rng) {
  std::uniform_int_distribution<int> q4(0, 15);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int G = k / group;
  std::vector<int> q(static_cast<size_t>(k) * n), z(static_cast<size_t>(G) * n);
  std::vector<__half> s(static_cast<size_t>(G) * n);
  for (auto& v : q) v = q4(rng);
  for (auto& v : z) v = q4(rng);
  for (auto& v : s) v = __float2half(0.01f + 0.02f * std::fabs(nd(rng)));
  auto pack = [&](const std::vector<int>& src, int rows) {
    std::vector<std::uint32_t> out(static_cast<size_t>(rows) * n / 8, 0);
    for (int r = 0; r < rows; ++r)
      for (int j = 0; j < n / 8; ++j)
        for (int i = 0; i < 8; ++i)
          out[static_cast<size_t>(r) * (n / 8) + j] |= static_cast<std::uint32_t>(src[static_cast<size_t>(r) * n + 8 * j + kOrder[i]]) << (4 * i);
    return out;
  };
  auto qw = pack(q, k), qz = pack(z, G);
  std::vector<float> x(static_cast<size_t>(m) * k), bias(n), ref(static_cast<size_t>(m) * n);
  for (auto& v : x) v = nd(rng);
  for (auto& v : bias) v = nd(rng);
  // Inputs as the kernel sees them (rounded to the dtype).
  for (auto& v : x) v = dt == DType::F16 ? __half2float(__float2half(v)) : dt == DType::BF16 ? __bfloat162float(__float2bfloat16(v)) : v;
  for (int r = 0; r < m; ++r)
    for (int c = 0; c < n; ++c) {
      double acc = bias[c];
      for (int kk = 0; kk < k; ++kk) {
        const int g = kk / group;
        const double w = (q[static_cast<size_t>(kk) * n + c] - z[static_cast<size_t>(g) * n + c]) * static_cast<double>(__half2float(s[static_cast<size_t>(g) * n + c]));
        acc += w * x[static_cast<size_t>(r) * k + kk];
      }
      ref[static_cast<size_t>(r) * n + c] = static_cast<float>(acc);
    }
  const size_t es = dt == DType::F32 ? 4 : 2;
  std::vector<char> xb(x.size() * es);
  for (size_t i = 0; i < x.size(); ++i) {
    if (dt == DType::F32) reinterpret_cast<float*>(xb.data())[i] = x[i];
    else if (dt == DType::F16) reinterpret_cast<__half*>(xb.data())[i] = __float2half(x[i]);
    else reinterpret_cast<__nv_bfloat16*>(xb.data())[i] = __float2bfloat16(x[i]);
  }
  void *dx, *dy, *dw, *dqw, *dqz, *ds, *db;
  CHECK(cudaMalloc(&dx, xb.size()));
  CHECK(cudaMalloc(&dy, static_cast<size_t>(m) * n * es));
  CHECK(cudaMalloc(&dw, static_cast<size_t>(k) * n * es));
  CHECK(cudaMalloc(&dqw, qw.size() * 4));
  CHECK(cudaMalloc(&dqz, qz.size() * 4));
  CHECK(cudaMalloc(&ds, s.size() * 2));
  CHECK(cudaMalloc(&db, bias.size() * 4));
  CHECK(cudaMemcpy(dx, xb.data(), xb.size(), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dqw, qw.data(), qw.size() * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dqz, qz.data(), qz.size() * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(ds, s.data(), s.size() * 2, cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(db, bias.data(), bias.size() * 4, cudaMemcpyHostToDevice));
  auto to_f = [&](const std::vector<char>& buf, size_t i) {
    return dt == DType::F32 ? reinterpret_cast<const float*>(buf.data())[i]
           : dt == DType::F16 ? __half2float(reinterpret_cast<const __half*>(buf.data())[i])
                              : __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(buf.data())[i]);
  };
  int fails = 0;
  double scale = 0;
  for (float v : ref) scale = std::fmax(scale, std::fabs(v));
  const double tol = (dt == DType::F32 ? 1e-4 : dt == DType::F16 ? 4e-3 : 2e-2) * scale;
  // GEMV.
  CHECK(awq_gemv(dx, reinterpret_cast<const std::int32_t*>(dqw), reinterpret_cast<const std::int32_t*>(dqz), ds,
                 static_cast<const float*>(db), dy, m, n, k, group, dt, nullptr));
  CHECK(cudaDeviceSynchronize());
  std::vector<char> yb(static_cast<size_t>(m) * n * es);
  CHECK(cudaMemcpy(yb.data(), dy, yb.size(), cudaMemcpyDeviceToHost));
  double gemv_err = 0;
  for (size_t i = 0; i < ref.size(); ++i) gemv_err = std::fmax(gemv_err, std::fabs(to_f(yb, i) - ref[i]));
  fails += gemv_err > tol;
  // Dequantize: W^T against (q - z) * s exactly (rounded to the dtype).
  CHECK(awq_dequantize(reinterpret_cast<const std::int32_t*>(dqw), reinterpret_cast<const std::int32_t*>(dqz), ds, n,
                       k, group, dw, dt, nullptr));
  CHECK(cudaDeviceSynchronize());
  std::vector<char> wb(static_cast<size_t>(k) * n * es);
  CHECK(cudaMemcpy(wb.data(), dw, wb.size(), cudaMemcpyDeviceToHost));
  double deq_err = 0;
  for (int kk = 0; kk < k; ++kk)
    for (int c = 0; c < n; ++c) {
      const int g = kk / group;
      const float w = (q[static_cast<size_t>(kk) * n + c] - z[static_cast<size_t>(g) * n + c]) * __half2float(s[static_cast<size_t>(g) * n + c]);
      deq_err = std::fmax(deq_err, std::fabs(to_f(wb, static_cast<size_t>(kk) * n + c) - w) / (std::fabs(w) + 1e-3));
    }
  fails += deq_err > (dt == DType::F32 ? 1e-6 : 1e-2);
  // Timing of the GEMV.
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  CHECK(cudaEventRecord(a));
  const int reps = 200;
  for (int i = 0; i < reps; ++i)
    CHECK(awq_gemv(dx, reinterpret_cast<const std::int32_t*>(dqw), reinterpret_cast<const std::int32_t*>(dqz), ds,
                   static_cast<const float*>(db), dy, m, n, k, group, dt, nullptr));
  CHECK(cudaEventRecord(b));
  CHECK(cudaEventSynchronize(b));
  float ms = 0;
  CHECK(cudaEventElapsedTime(&ms, a, b));
  const double us = 1000.0 * ms / reps;
  std::printf("m=%-3d n=%-5d k=%-5d g=%d dtype=%d  gemv max err %.3g (tol %.3g)  dequant rel err %.3g  gemv %.1f us (%.0f GB/s of int4 weights)  %s\n",
              m, n, k, group, static_cast<int>(dt), gemv_err, tol, deq_err, us, (k * (double)n / 2) / (us * 1e3),
              fails ? "FAIL" : "ok");
  for (void* p : {dx, dy, dw, dqw, dqz, ds, db}) CHECK(cudaFree(p));
  return fails;
}

int main() {
  std::mt19937 rng(1);
  int fails = 0;
  for (DType dt : {DType::F32, DType::F16, DType::BF16})
    for (int m : {1, 3, 8, 11})
      fails += run(m, 40, 384, 128, dt, rng);
  fails += run(1, 2816, 512, 128, DType::F16, rng);
  fails += run(1, 512, 1408, 128, DType::BF16, rng);
  fails += run(1, 4096, 4096, 128, DType::F16, rng);
  fails += run(1, 8192, 4096, 64, DType::BF16, rng);
  std::printf("%s\n", fails ? "FAILED" : "ALL OK");
  return fails ? 1 : 0;
}
