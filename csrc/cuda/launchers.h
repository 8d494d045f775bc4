// Torch-free launchers of the CUDA kernels. They take raw pointers and sizes and return a
// cudaError_t as int, so the .cu files compile with nvcc alone (checked in CI without a GPU)
// and csrc/cuda/bindings_cuda.cpp binds them to torch tensors.
#pragma once

#include <cstdint>

namespace xpe_cuda {

enum class DType : int { f32 = 0, f64 = 1, bf16 = 2 };

int assemble_embeddings_forward(DType dt, const int64_t* ids, const void* prompt, const void* word,
                                const void* pos, const void* type_row, const void* ln_w,
                                const void* ln_b, void* out, int64_t B, int64_t L, int64_t N,
                                int64_t d, int64_t offset, bool shared, double eps, void* stream);

int assemble_embeddings_backward(DType dt, const void* grad_out, const void* prompt,
                                 const void* pos, const void* type_row, const void* ln_w,
                                 void* grad_prompt, int64_t B, int64_t L, int64_t N, int64_t d,
                                 int64_t offset, bool shared, double eps, void* stream);

// Sets *bad_flag (device int, zeroed by the caller) to 1 if any id is outside [0, V).
int check_token_ids(const int64_t* ids, int64_t n, int64_t V, int* bad_flag, void* stream);

enum Epilogue : int { kNone = 0, kReluMask = 1, kReluGrad = 2 };

// C[M, N] = epilogue(A @ B + bias) for strided A [M, K] and B [K, N]; C contiguous.
// kReluMask: relu then * mask; kReluGrad: * mask where h > 0, else 0 (mask may be null).
int linear(DType dt, const void* A, int64_t sa0, int64_t sa1, const void* B, int64_t sb0,
           int64_t sb1, void* C, int64_t M, int64_t N, int64_t K, const void* bias,
           const void* mask, const void* h, int epilogue, void* stream);

// out[n] = sum_m g[m, n] for contiguous g [M, N], accumulated in fp32 (fp64 for double).
int column_sum(DType dt, const void* g, void* out, int64_t M, int64_t N, void* stream);

// The prompt-encoder MLP over contiguous tensors (weights in nn.Linear's [out, in] layout,
// masks [N, h] or null): h1 = relu(x w1^T + b1) * m1, h2 = relu(h1 w2^T + b2) * m2,
// out = h2 w3^T + b3; h1, h2 [N, h] and out [N, d] are written.
int prompt_encoder_mlp_forward(DType dt, const void* x, const void* w1, const void* b1,
                               const void* w2, const void* b2, const void* w3, const void* b3,
                               const void* m1, const void* m2, void* h1, void* h2, void* out,
                               int64_t N, int64_t d_in, int64_t h, int64_t d, void* stream);

// Its backward from grad_out g [N, d] and the saved h1, h2; g1, g2 are [N, h] workspaces.
int prompt_encoder_mlp_backward(DType dt, const void* g, const void* x, const void* w1,
                                const void* w2, const void* w3, const void* h1, const void* h2,
                                const void* m1, const void* m2, void* g1, void* g2, void* gx,
                                void* gw1, void* gb1, void* gw2, void* gb2, void* gw3, void* gb3,
                                int64_t N, int64_t d_in, int64_t h, int64_t d, void* stream);

}  // namespace xpe_cuda
