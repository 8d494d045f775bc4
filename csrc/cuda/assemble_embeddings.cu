// CUDA kernels of assemble_embeddings. Torch-free: see launchers.h.
//
// Forward: one block per output row (B * (N + L) blocks); threads stride over d, block
// reductions give the row's mean and variance (two passes, fp32 accumulation, or fp64 for
// double), and the element math is the one the CPU kernel uses (kernel_math.h).
// Backward: one block per prompt row; a shared prompt's incoming gradient is summed over the
// batch before the single LayerNorm backward of that row.
#include <cuda_runtime.h>

#include "launchers.h"
#include "xpe_fast/kernel_math.h"

namespace xpe_cuda {
namespace {

constexpr int kThreads = 256;

template <typename A>
__device__ A block_sum(A v, A* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) >> 5;
  v = (threadIdx.x < nwarps) ? scratch[threadIdx.x] : A(0);
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x == 0) scratch[0] = v;
  __syncthreads();
  return scratch[0];
}

// Mean and 1/std of the row src + pos + type, over the block (two passes, in A).
template <typename T, typename A>
__device__ void row_stats(const T* src, const T* prow, const T* typ, int64_t d, A eps, A* scratch,
                          A& mean, A& rstd) {
  A sum = 0;
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x)
    sum += xpe::embed_sum<A>(xpe::load(src, k), xpe::load(prow, k), xpe::load(typ, k));
  mean = block_sum(sum, scratch) / A(d);
  A var = 0;
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
    const A c = xpe::embed_sum<A>(xpe::load(src, k), xpe::load(prow, k), xpe::load(typ, k)) - mean;
    var += c * c;
  }
  rstd = xpe::rsqrt_acc(block_sum(var, scratch) / A(d) + eps);
}

template <typename T, typename A = typename xpe::acc_of<T>::type>
__global__ void assemble_fwd_kernel(const int64_t* __restrict__ ids, const T* __restrict__ prompt,
                                    const T* __restrict__ word, const T* __restrict__ pos,
                                    const T* __restrict__ typ, const T* __restrict__ w,
                                    const T* __restrict__ b, T* __restrict__ out, int64_t L,
                                    int64_t N, int64_t d, int64_t offset, bool shared, A eps) {
  __shared__ A scratch[32];
  const int64_t r = blockIdx.x, S = N + L;
  const int64_t bi = r / S, j = r % S;
  const T* src =
      j < N ? prompt + xpe::prompt_row(bi, j, N, shared) * d : word + ids[bi * L + (j - N)] * d;
  const T* prow = pos + (offset + j) * d;
  A mean, rstd;
  row_stats(src, prow, typ, d, eps, scratch, mean, rstd);
  T* dst = out + r * d;
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
    const A x = xpe::embed_sum<A>(xpe::load(src, k), xpe::load(prow, k), xpe::load(typ, k));
    xpe::store(dst, k, xpe::ln_apply<A>(x, mean, rstd, xpe::load(w, k), xpe::load(b, k)));
  }
}

template <typename T, typename A = typename xpe::acc_of<T>::type>
__global__ void assemble_bwd_kernel(const T* __restrict__ gout, const T* __restrict__ prompt,
                                    const T* __restrict__ pos, const T* __restrict__ typ,
                                    const T* __restrict__ w, T* __restrict__ gprompt, int64_t B,
                                    int64_t L, int64_t N, int64_t d, int64_t offset, bool shared,
                                    A eps) {
  __shared__ A scratch[32];
  const int64_t r = blockIdx.x, S = N + L, j = r % N;
  const T* src = prompt + r * d;
  const T* prow = pos + (offset + j) * d;
  auto grad = [&](int64_t k) -> A {
    if (!shared) return xpe::load(gout, ((r / N) * S + j) * d + k);
    A g = 0;
    for (int64_t bi = 0; bi < B; ++bi) g += xpe::load(gout, (bi * S + j) * d + k);
    return g;
  };
  A mean, rstd;
  row_stats(src, prow, typ, d, eps, scratch, mean, rstd);
  A sgw = 0, sgwx = 0;
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
    const A x = xpe::embed_sum<A>(xpe::load(src, k), xpe::load(prow, k), xpe::load(typ, k));
    const A gw = grad(k) * xpe::load(w, k);
    sgw += gw;
    sgwx += gw * (x - mean) * rstd;
  }
  const A mgw = block_sum(sgw, scratch) / A(d);
  const A mgwx = block_sum(sgwx, scratch) / A(d);
  T* dst = gprompt + r * d;
  for (int64_t k = threadIdx.x; k < d; k += blockDim.x) {
    const A x = xpe::embed_sum<A>(xpe::load(src, k), xpe::load(prow, k), xpe::load(typ, k));
    const A xhat = (x - mean) * rstd;
    xpe::store(dst, k, xpe::ln_grad_input<A>(grad(k) * xpe::load(w, k), xhat, rstd, mgw, mgwx));
  }
}

__global__ void check_ids_kernel(const int64_t* ids, int64_t n, int64_t V, int* bad) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    if (ids[i] < 0 || ids[i] >= V) *bad = 1;
}

template <typename T>
int launch_fwd(const int64_t* ids, const void* p, const void* wd, const void* ps, const void* t,
               const void* w, const void* b, void* o, int64_t B, int64_t L, int64_t N, int64_t d,
               int64_t off, bool shared, double eps, cudaStream_t s) {
  using A = typename xpe::acc_of<T>::type;
  const int64_t rows = B * (N + L);
  assemble_fwd_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, s>>>(
      ids, static_cast<const T*>(p), static_cast<const T*>(wd), static_cast<const T*>(ps),
      static_cast<const T*>(t), static_cast<const T*>(w), static_cast<const T*>(b),
      static_cast<T*>(o), L, N, d, off, shared, static_cast<A>(eps));
  return static_cast<int>(cudaGetLastError());
}

template <typename T>
int launch_bwd(const void* g, const void* p, const void* ps, const void* t, const void* w, void* gp,
               int64_t B, int64_t L, int64_t N, int64_t d, int64_t off, bool shared, double eps,
               cudaStream_t s) {
  using A = typename xpe::acc_of<T>::type;
  const int64_t rows = shared ? N : B * N;
  assemble_bwd_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, s>>>(
      static_cast<const T*>(g), static_cast<const T*>(p), static_cast<const T*>(ps),
      static_cast<const T*>(t), static_cast<const T*>(w), static_cast<T*>(gp), B, L, N, d, off,
      shared, static_cast<A>(eps));
  return static_cast<int>(cudaGetLastError());
}

}  // namespace

int assemble_embeddings_forward(DType dt, const int64_t* ids, const void* prompt, const void* word,
                                const void* pos, const void* type_row, const void* ln_w,
                                const void* ln_b, void* out, int64_t B, int64_t L, int64_t N,
                                int64_t d, int64_t offset, bool shared, double eps, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dt) {
    case DType::f32:
      return launch_fwd<float>(ids, prompt, word, pos, type_row, ln_w, ln_b, out, B, L, N, d,
                               offset, shared, eps, s);
    case DType::f64:
      return launch_fwd<double>(ids, prompt, word, pos, type_row, ln_w, ln_b, out, B, L, N, d,
                                offset, shared, eps, s);
    case DType::bf16:
      return launch_fwd<xpe::bf16_t>(ids, prompt, word, pos, type_row, ln_w, ln_b, out, B, L, N, d,
                                     offset, shared, eps, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int assemble_embeddings_backward(DType dt, const void* grad_out, const void* prompt,
                                 const void* pos, const void* type_row, const void* ln_w,
                                 void* grad_prompt, int64_t B, int64_t L, int64_t N, int64_t d,
                                 int64_t offset, bool shared, double eps, void* stream) {
  auto s = static_cast<cudaStream_t>(stream);
  switch (dt) {
    case DType::f32:
      return launch_bwd<float>(grad_out, prompt, pos, type_row, ln_w, grad_prompt, B, L, N, d,
                               offset, shared, eps, s);
    case DType::f64:
      return launch_bwd<double>(grad_out, prompt, pos, type_row, ln_w, grad_prompt, B, L, N, d,
                                offset, shared, eps, s);
    case DType::bf16:
      return launch_bwd<xpe::bf16_t>(grad_out, prompt, pos, type_row, ln_w, grad_prompt, B, L, N, d,
                                     offset, shared, eps, s);
  }
  return static_cast<int>(cudaErrorInvalidValue);
}

int check_token_ids(const int64_t* ids, int64_t n, int64_t V, int* bad_flag, void* stream) {
  if (n == 0) return 0;
  const int64_t blocks64 = (n + kThreads - 1) / kThreads;
  const unsigned blocks = static_cast<unsigned>(blocks64 < 1024 ? blocks64 : 1024);
  check_ids_kernel<<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(ids, n, V, bad_flag);
  return static_cast<int>(cudaGetLastError());
}

}  // namespace xpe_cuda
