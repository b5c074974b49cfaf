// Batch conversions between binary16 and float for the kernels, compiled once per instruction set.
// Where the build targets F16C (x86-64-v3 and v4) whole vectors convert in one instruction;
// elsewhere, and for the tail, the software conversions of common/half.h run, which give exactly
// the same bits (checked against F16C for every input), so the builds still agree byte for byte.
#pragma once

#include <cstddef>

#include "common/half.h"

#if defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

#ifndef PYCOMM_KERNEL_ISA
#error "half_batch.h is included only by an isa_*.cc file that defines PYCOMM_KERNEL_ISA"
#endif

namespace pycomm::kernels::PYCOMM_KERNEL_ISA {

inline void halves_to_floats(const Half* src, float* dst, std::size_t n) {
  std::size_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  }
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
  }
#endif
  for (; i < n; ++i) dst[i] = half_to_float(src[i]);
}

inline void floats_to_halves(const float* src, Half* dst, std::size_t n) {
  std::size_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                        _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
#elif defined(__F16C__)
  for (; i + 8 <= n; i += 8) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                     _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
#endif
  for (; i < n; ++i) dst[i] = float_to_half(src[i]);
}

}  // namespace pycomm::kernels::PYCOMM_KERNEL_ISA
