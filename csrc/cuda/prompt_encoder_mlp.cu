// CUDA kernels of the prompt-encoder MLP. Torch-free: see launchers.h.
//
// The toolkit on the project's machines has no cuBLAS, and the MLP's products are small
// (N = 20 rows), so one shared-memory tiled GEMM with fused epilogues serves every product of
// forward and backward (as in the Triton path): bias + ReLU + dropout after a forward GEMM,
// the ReLU/dropout gradient after a backward one. The epilogue math is kernel_math.h's, the
// same functions the CPU kernel runs.
#include <cuda_runtime.h>

#include "launchers.h"
#include "xpe_fast/kernel_math.h"

namespace xpe_cuda {
namespace {

constexpr int kTile = 32;

template <typename T, typename A = typename xpe::acc_of<T>::type>
__global__ void linear_kernel(const T* __restrict__ a, int64_t sa0, int64_t sa1,
                              const T* __restrict__ b, int64_t sb0, int64_t sb1, T* __restrict__ c,
                              int64_t M, int64_t N, int64_t K, const T* __restrict__ bias,
                              const T* __restrict__ mask, const T* __restrict__ h, int epilogue) {
  __shared__ A as[kTile][kTile + 1];
  __shared__ A bs[kTile][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y;  // 32 x 8 threads, 4 rows each
  const int64_t col = blockIdx.x * int64_t(kTile) + tx;
  const int64_t row0 = blockIdx.y * int64_t(kTile);
  A acc[4] = {0, 0, 0, 0};
  for (int64_t k0 = 0; k0 < K; k0 += kTile) {
    for (int i = ty; i < kTile; i += blockDim.y) {
      const int64_t ar = row0 + i, ak = k0 + tx;
      as[i][tx] = (ar < M && ak < K) ? A(xpe::load(a, ar * sa0 + ak * sa1)) : A(0);
      const int64_t bk = k0 + i;
      bs[i][tx] = (bk < K && col < N) ? A(xpe::load(b, bk * sb0 + col * sb1)) : A(0);
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kTile; ++kk) {
      const A bv = bs[kk][tx];
#pragma unroll
      for (int q = 0; q < 4; ++q) acc[q] += as[ty + q * 8][kk] * bv;
    }
    __syncthreads();
  }
  if (col >= N) return;
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const int64_t row = row0 + ty + q * 8;
    if (row >= M) continue;
    A v = acc[q];
    if (bias) v += A(xpe::load(bias, col));
    const int64_t o = row * N + col;
    const A m = mask ? A(xpe::load(mask, o)) : A(1);
    if (epilogue == kReluMask)
      v = xpe::relu_dropout<A>(v, m);
    else if (epilogue == kReluGrad)
      v = xpe::relu_dropout_grad<A>(v, A(xpe::load(h, o)), m);
    xpe::store(c, o, v);
  }
}

template <typename T, typename A = typename xpe::acc_of<T>::type>
__global__ void column_sum_kernel(const T* __restrict__ g, T* __restrict__ out, int64_t M,
                                  int64_t N) {
  const int64_t col = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (col >= N) return;
  A s = 0;
  for (int64_t m = 0; m < M; ++m) s += A(xpe::load(g, m * N + col));
  xpe::store(out, col, s);
}

template <typename T>
int launch_linear(const void* a, int64_t sa0, int64_t sa1, const void* b, int64_t sb0, int64_t sb1,
                  void* c, int64_t M, int64_t N, int64_t K, const void* bias, const void* mask,
                  const void* h, int epilogue, cudaStream_t s) {
  const dim3 block(kTile, 8);
  const dim3 grid(static_cast<unsigned>((N + kTile - 1) / kTile),
                  static_cast<unsigned>((M + kTile - 1) / kTile));
  linear_kernel<T>
      <<<grid, block, 0, s>>>(static_cast<const T*>(a), sa0, sa1, static_cast<const T*>(b), sb0,
                              sb1, static_cast<T*>(c), M, N, K, static_cast<const T*>(bias),
                              static_cast<const T*>(mask), static_cast<const T*>(h), epilogue);
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_colsum(const void* g, void* out, int64_t M, int64_t N, cudaStream_t s) {
  const unsigned blocks = static_cast<unsigned>((N + 255) / 256);
  column_sum_kernel<T><<<blocks, 256, 0, s>>>(static_cast<const T*>(g), static_cast<T*>(out), M, N);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int linear(DType dt, const void* A, int64_t sa0, int64_t sa1, const void* B, int64_t sb0,
           int64_t sb1, void* C, int64_t M, int64_t N, int64_t K, const void* bias,
           const void* mask, const void* h, int epilogue, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dt) {
    case DType::f32:
      return launch_linear<float>(A, sa0, sa1, B, sb0, sb1, C, M, N, K, bias, mask, h, epilogue, s);
    case DType::f64:
      return launch_linear<double>(A, sa0, sa1, B, sb0, sb1, C, M, N, K, bias, mask, h, epilogue,
                                   s);
    case DType::bf16:
      return launch_linear<xpe::bf16_t>(A, sa0, sa1, B, sb0, sb1, C, M, N, K, bias, mask, h,
                                        epilogue, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int column_sum(DType dt, const void* g, void* out, int64_t M, int64_t N, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dt) {
    case DType::f32:
      return launch_colsum<float>(g, out, M, N, s);
    case DType::f64:
      return launch_colsum<double>(g, out, M, N, s);
    case DType::bf16:
      return launch_colsum<xpe::bf16_t>(g, out, M, N, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

// The GEMM sequences: every product reads its operands through strides (a transpose is a
// view), so nothing is copied; each call stops at the first launch error.
int prompt_encoder_mlp_forward(DType dt, const void* x, const void* w1, const void* b1,
                               const void* w2, const void* b2, const void* w3, const void* b3,
                               const void* m1, const void* m2, void* h1, void* h2, void* out,
                               int64_t N, int64_t d_in, int64_t h, int64_t d, void* stream) {
  int err = linear(dt, x, d_in, 1, w1, 1, d_in, h1, N, h, d_in, b1, m1, nullptr, kReluMask, stream);
  if (!err) err = linear(dt, h1, h, 1, w2, 1, h, h2, N, h, h, b2, m2, nullptr, kReluMask, stream);
  if (!err) err = linear(dt, h2, h, 1, w3, 1, h, out, N, d, h, b3, nullptr, nullptr, kNone, stream);
  return err;
}

int prompt_encoder_mlp_backward(DType dt, const void* g, const void* x, const void* w1,
                                const void* w2, const void* w3, const void* h1, const void* h2,
                                const void* m1, const void* m2, void* g1, void* g2, void* gx,
                                void* gw1, void* gb1, void* gw2, void* gb2, void* gw3, void* gb3,
                                int64_t N, int64_t d_in, int64_t h, int64_t d, void* stream) {
  // layer 3: gw3 = g^T h2, gb3 = colsum(g), g2 = (g w3) through relu/dropout of h2
  int err = linear(dt, g, 1, d, h2, h, 1, gw3, d, h, N, nullptr, nullptr, nullptr, kNone, stream);
  if (!err) err = column_sum(dt, g, gb3, N, d, stream);
  if (!err) err = linear(dt, g, d, 1, w3, h, 1, g2, N, h, d, nullptr, m2, h2, kReluGrad, stream);
  // layer 2
  if (!err)
    err = linear(dt, g2, 1, h, h1, h, 1, gw2, h, h, N, nullptr, nullptr, nullptr, kNone, stream);
  if (!err) err = column_sum(dt, g2, gb2, N, h, stream);
  if (!err) err = linear(dt, g2, h, 1, w2, h, 1, g1, N, h, h, nullptr, m1, h1, kReluGrad, stream);
  // layer 1
  if (!err)
    err =
        linear(dt, g1, 1, h, x, d_in, 1, gw1, h, d_in, N, nullptr, nullptr, nullptr, kNone, stream);
  if (!err) err = column_sum(dt, g1, gb1, N, h, stream);
  if (!err)
    err =
        linear(dt, g1, h, 1, w1, d_in, 1, gx, N, d_in, h, nullptr, nullptr, nullptr, kNone, stream);
  return err;
}

}  // namespace xpe_cuda
