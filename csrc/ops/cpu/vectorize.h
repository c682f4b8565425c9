// CPU multiversioning for the few streaming loops that are bound by SIMD width:
// the package is built for baseline x86-64 (SSE2), so GCC/Clang also emit an
// AVX2 clone and pick one at load time (ifunc). Elsewhere it is a no-op.
#pragma once

#if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__)) && defined(__linux__)
#define ODEREG_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define ODEREG_SIMD_CLONES
#endif
