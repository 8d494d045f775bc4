// Multi-versioned CPU kernels: XPE_MULTIVERSION compiles a kernel three times (AVX-512 with
// BW/VL for 16-bit bf16 lanes, AVX2 + FMA, baseline) and picks one at first call, so the
// wheel needs no -march flag. Level 3 (AVX-512 plus AVX512-BF16) runs the AVX-512 variant
// and, besides, the bf16 GEMMs of skinny_gemm_bf16.cpp.
//
// Dispatch is by ISA feature (__builtin_cpu_supports). GCC's target_clones("arch=...")
// dispatches on the CPU model instead, so an AMD processor with AVX-512 got the baseline
// (SSE2) copy, several times slower; and target_clones cannot name avx512bw.
// XPE_FAST_CPU_ISA=avx512bf16|avx512|avx2|baseline forces a level (tests run every level
// this way).
#pragma once

#include <cstdlib>
#include <cstring>

namespace xpe_cpu {

// 3 = AVX-512 with AVX512-BF16, 2 = AVX-512 (F, BW, VL, DQ), 1 = AVX2 + FMA, 0 = baseline.
inline int isa_level() {
  int best = 0;
#if defined(__x86_64__) && defined(__GNUC__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = 1;
  if (best == 1 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
    best = 2;
  if (best == 2 && __builtin_cpu_supports("avx512bf16")) best = 3;
#endif
  if (const char* env = std::getenv("XPE_FAST_CPU_ISA")) {
    const int want = !std::strcmp(env, "avx512bf16") ? 3
                     : !std::strcmp(env, "avx512")   ? 2
                     : !std::strcmp(env, "avx2")     ? 1
                                                     : 0;
    return want < best ? want : best;  // never above what the CPU has
  }
  return best;
}

// The level this process runs (read once).
inline int active_isa_level() {
  static const int level = isa_level();
  return level;
}

template <typename F>
F pick_isa(F avx512, F avx2, F base) {
  const int level = active_isa_level();
  return level >= 2 ? avx512 : level == 1 ? avx2 : base;
}

}  // namespace xpe_cpu

#if defined(__x86_64__) && defined(__GNUC__)
#define XPE_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma")))
#define XPE_TARGET_AVX2 __attribute__((target("avx2,fma")))
// Defines `void name params` that runs, in the variant this CPU supports, `avx512 args`,
// `avx2 args` or `base args` (one implementation per level where a kernel needs it).
#define XPE_MULTIVERSION_EACH(name, params, args, avx512, avx2, base)                       \
  XPE_TARGET_AVX512 static void name##_avx512 params { avx512 args; }                       \
  XPE_TARGET_AVX2 static void name##_avx2 params { avx2 args; }                             \
  static void name##_base params { base args; }                                             \
  static void name params {                                                                 \
    static const auto fn = ::xpe_cpu::pick_isa(&name##_avx512, &name##_avx2, &name##_base); \
    fn args;                                                                                \
  }
#else
#define XPE_MULTIVERSION_EACH(name, params, args, avx512, avx2, base) \
  static void name params { base args; }
#endif
// The same implementation compiled for every level.
#define XPE_MULTIVERSION(name, params, args, impl) \
  XPE_MULTIVERSION_EACH(name, params, args, impl, impl, impl)
