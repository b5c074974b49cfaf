// Quantizer and cast loops, compiled once per instruction set (see kernel_table.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "common/half.h"
#include "kernels/element.h"
#include "kernels/half_batch.h"
#include "kernels/quantize.h"

#ifndef PYCOMM_KERNEL_ISA
#error "quantize_loops.h is included only by an isa_*.cc file that defines PYCOMM_KERNEL_ISA"
#endif

namespace pycomm::kernels::PYCOMM_KERNEL_ISA {

constexpr float kFloatMax = 3.40282347e38f;

// Round to nearest, ties to even, for |v| < 2^22: adding and removing 1.5 * 2^23 leaves the FPU's
// default rounding to do the work, and vectorises on every target (no libm call).
inline float round_nearest_even(float v) {
  constexpr float magic = 12582912.0f;
  return (v + magic) - magic;
}

inline float round_down(float v) {
  const float nearest = round_nearest_even(v);
  return nearest > v ? nearest - 1.0f : nearest;
}

// 32-bit finaliser of MurmurHash3: every input bit affects every output bit.
inline std::uint32_t mix32(std::uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

// Uniform in [0, 1) from (seed, element index), a pure function so every peer and the GPU draw the
// same numbers. 32-bit arithmetic only, so it vectorises without 64-bit multiplies.
inline float uniform_from_counter(std::uint64_t seed, std::uint64_t index) {
  const auto low = static_cast<std::uint32_t>(index);
  const auto high = static_cast<std::uint32_t>(index >> 32);
  std::uint32_t h = mix32(low * 0x9e3779b9u ^ static_cast<std::uint32_t>(seed));
  h = mix32(h ^ high * 0x85ebca77u ^ static_cast<std::uint32_t>(seed >> 32));
  return static_cast<float>(h >> 8) * (1.0f / 16777216.0f);
}

template <typename T>
float load_float(const T* src, std::size_t i) {
  return static_cast<float>(Element<T>::load(src[i]));
}

// float64 -> float32 with round-to-odd: truncate toward zero, then set the last bit if anything was
// dropped. Rounding that result once more to a narrower type gives the correctly rounded value.
inline float round_to_odd_float(double value) {
  float nearest = static_cast<float>(value);
  std::uint32_t bits = float_bits(nearest);
  const double back = static_cast<double>(nearest);
  const bool finite = nearest - nearest == 0.0f;
  const bool overshoot = finite && (value < 0 ? back < value : back > value);
  bits = overshoot ? bits - 1 : bits;  // one step toward zero (same sign: magnitude - 1)
  const bool inexact = finite && static_cast<double>(bits_float(bits)) != value;
  return bits_float(inexact ? (bits | 1u) : bits);
}

template <typename Dst, typename Src>
void cast_loop(Dst* dst, const Src* src, std::size_t n) {
  if constexpr (std::is_same_v<Dst, float> && std::is_same_v<Src, Half>) {
    halves_to_floats(src, dst, n);
    return;
  } else if constexpr (std::is_same_v<Dst, Half> && std::is_same_v<Src, float>) {
    floats_to_halves(src, dst, n);
    return;
  }
  for (std::size_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<Src, double> && (std::is_same_v<Dst, Half> || std::is_same_v<Dst, BFloat16>)) {
      dst[i] = Element<Dst>::store(round_to_odd_float(src[i]));
    } else if constexpr (std::is_same_v<Dst, double>) {
      dst[i] = static_cast<double>(Element<Src>::load(src[i]));
    } else {
      dst[i] = Element<Dst>::store(static_cast<float>(Element<Src>::load(src[i])));
    }
  }
}

template <typename Body>
void visit_float_dtype(DType dtype, Body&& body) {
  switch (dtype) {
    case DType::f16: body(TypeTag<Half>{}); return;
    case DType::bf16: body(TypeTag<BFloat16>{}); return;
    case DType::f32: body(TypeTag<float>{}); return;
    case DType::f64: body(TypeTag<double>{}); return;
    default: return;  // validated by the caller (quantize.cc); kernels do not throw
  }
}

inline void cast_any(void* dst, DType dst_dtype, const void* src, DType src_dtype, std::size_t n) {
  visit_float_dtype(dst_dtype, [&](auto dst_tag) {
    visit_float_dtype(src_dtype, [&](auto src_tag) {
      using Dst = typename decltype(dst_tag)::type;
      using Src = typename decltype(src_tag)::type;
      cast_loop(static_cast<Dst*>(dst), static_cast<const Src*>(src), n);
    });
  });
}

// Magnitudes compare like their bit patterns, so the block maximum is an integer reduction (which
// the vectoriser handles, unlike a float max that must respect NaN and signed zeros). Anything at
// or above the infinity pattern is an infinity or a NaN.
template <typename T>
bool absmax_of_block(const T* src, std::size_t n, float* absmax) {
  std::uint32_t largest = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint32_t magnitude = float_bits(load_float(src, i)) & 0x7fffffffu;
    largest = magnitude > largest ? magnitude : largest;
  }
  *absmax = bits_float(largest);
  return largest < 0x7f800000u;
}

// Floats ordered as signed integers: flip the magnitude bits of negatives.
inline std::int32_t ordered_key(float x) {
  const auto bits = static_cast<std::int32_t>(float_bits(x));
  return bits ^ ((bits >> 31) & 0x7fffffff);
}

inline float from_ordered_key(std::int32_t key) {
  return bits_float(static_cast<std::uint32_t>(key ^ ((key >> 31) & 0x7fffffff)));
}

template <typename T>
bool range_of_block(const T* src, std::size_t n, float* low, float* high) {
  std::int32_t smallest = ordered_key(load_float(src, 0));
  std::int32_t largest = smallest;
  std::uint32_t largest_magnitude = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float x = load_float(src, i);
    const std::int32_t key = ordered_key(x);
    const std::uint32_t magnitude = float_bits(x) & 0x7fffffffu;
    smallest = key < smallest ? key : smallest;
    largest = key > largest ? key : largest;
    largest_magnitude = magnitude > largest_magnitude ? magnitude : largest_magnitude;
  }
  *low = from_ordered_key(smallest);
  *high = from_ordered_key(largest);
  return largest_magnitude < 0x7f800000u;
}

// One quantized value: round(x / scale) (to nearest, or stochastically), clamped to [low, high].
// scale is never 0 here. The rounding mode is a template parameter so the loops do not evaluate
// both modes and select (which the vectoriser would otherwise do).
//
// Stochastic rounding goes up with probability equal to the fraction of x / scale above the grid
// point below it. The fraction is exact (Sterbenz: the grid point is within a factor of two of
// x / scale, except in (-1, 0), where it errs by at most 2^-25), whereas floor(x / scale + u)
// would round the sum to float first and so could move a value already on the grid up a step.
template <Rounding mode>
float quantize_value(float x, float scale, float low, float high, std::uint64_t seed, std::size_t index) {
  const float scaled = x / scale;
  float q;
  if constexpr (mode == Rounding::nearest) {
    q = round_nearest_even(scaled);
  } else {
    const float below = round_down(scaled);
    q = uniform_from_counter(seed, index) < scaled - below ? below + 1.0f : below;
  }
  return q > high ? high : (q < low ? low : q);
}

// Calls body(std::integral_constant<Rounding, mode>{}) for the options' rounding mode.
template <typename Body>
void with_rounding(const QuantizeOptions& options, Body&& body) {
  if (options.rounding == Rounding::nearest) {
    body(std::integral_constant<Rounding, Rounding::nearest>{});
  } else {
    body(std::integral_constant<Rounding, Rounding::stochastic>{});
  }
}

template <typename T>
void quantize_int8(const T* src, std::size_t n, float scale, const QuantizeOptions& options,
                   std::size_t first_element, std::int8_t* out) {
  if (scale == 0.0f) {
    for (std::size_t i = 0; i < n; ++i) out[i] = 0;
    return;
  }
  with_rounding(options, [&](auto mode) {
    for (std::size_t i = 0; i < n; ++i) {
      out[i] = static_cast<std::int8_t>(quantize_value<decltype(mode)::value>(
          load_float(src, i), scale, -127.0f, 127.0f, options.seed, first_element + i));
    }
  });
}

// Two values a byte: element 2j in the low nibble, 2j + 1 in the high nibble (two's complement).
template <typename T>
void quantize_int4(const T* src, std::size_t n, float scale, const QuantizeOptions& options,
                   std::size_t first_element, std::uint8_t* out) {
  if (scale == 0.0f) {
    for (std::size_t j = 0; j < (n + 1) / 2; ++j) out[j] = 0;
    return;
  }
  with_rounding(options, [&](auto mode) {
    auto nibble = [&](std::size_t i) {
      const float q = quantize_value<decltype(mode)::value>(load_float(src, i), scale, -7.0f, 7.0f, options.seed,
                                                            first_element + i);
      return static_cast<unsigned>(static_cast<int>(q)) & 0x0fu;
    };
    const std::size_t pairs = n / 2;
    for (std::size_t j = 0; j < pairs; ++j) {
      out[j] = static_cast<std::uint8_t>(nibble(2 * j) | (nibble(2 * j + 1) << 4));
    }
    if (n % 2 != 0) out[pairs] = static_cast<std::uint8_t>(nibble(n - 1));
  });
}

template <typename T>
void quantize_uint8(const T* src, std::size_t n, float low, float scale, const QuantizeOptions& options,
                    std::size_t first_element, std::uint8_t* out) {
  if (scale == 0.0f) {
    for (std::size_t i = 0; i < n; ++i) out[i] = 0;
    return;
  }
  with_rounding(options, [&](auto mode) {
    for (std::size_t i = 0; i < n; ++i) {
      out[i] = static_cast<std::uint8_t>(quantize_value<decltype(mode)::value>(
          load_float(src, i) - low, scale, 0.0f, 255.0f, options.seed, first_element + i));
    }
  });
}

template <typename T>
bool quantize_block_typed(const T* src, std::size_t n, const QuantizeOptions& options, std::size_t first_element,
                          void* data, float* scale_out, float* zero_point_out) {
  switch (options.scheme) {
    case QuantScheme::int8_absmax: {
      float absmax;
      if (!absmax_of_block(src, n, &absmax)) return false;
      *scale_out = absmax / 127.0f;
      quantize_int8(src, n, *scale_out, options, first_element, static_cast<std::int8_t*>(data));
      return true;
    }
    case QuantScheme::int4_absmax: {
      float absmax;
      if (!absmax_of_block(src, n, &absmax)) return false;
      *scale_out = absmax / 7.0f;
      quantize_int4(src, n, *scale_out, options, first_element, static_cast<std::uint8_t*>(data));
      return true;
    }
    case QuantScheme::uint8_minmax: {
      float low, high;
      if (!range_of_block(src, n, &low, &high)) return false;
      if (!(static_cast<double>(high) - low <= kFloatMax)) return false;
      *scale_out = (high - low) / 255.0f;
      *zero_point_out = low;
      quantize_uint8(src, n, low, *scale_out, options, first_element, static_cast<std::uint8_t*>(data));
      return true;
    }
  }
  return false;
}

inline bool quantize_block_any(const void* src, DType src_dtype, std::size_t n, const QuantizeOptions& options,
                               std::size_t first_element, void* data, float* scale, float* zero_point) {
  bool finite = false;
  visit_float_dtype(src_dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    finite = quantize_block_typed(static_cast<const T*>(src), n, options, first_element, data, scale, zero_point);
  });
  return finite;
}

// out[i] = value (rounded to T), or out[i] += value for a float32 accumulator.
template <typename T>
void store_value(T* out, std::size_t i, float value, bool accumulate) {
  if constexpr (std::is_same_v<T, float>) {
    out[i] = accumulate ? out[i] + value : value;
  } else {
    out[i] = Element<T>::store(static_cast<typename Element<T>::Compute>(value));
  }
}

inline float int4_value(unsigned nibble, float scale) {
  return static_cast<float>(static_cast<int>(nibble) - (nibble >= 8 ? 16 : 0)) * scale;
}

template <typename T>
void dequantize_typed(const void* data, float scale, float zero_point, std::size_t n, QuantScheme scheme, T* out,
                      bool accumulate) {
  switch (scheme) {
    case QuantScheme::int8_absmax: {
      const auto* q = static_cast<const std::int8_t*>(data);
      for (std::size_t i = 0; i < n; ++i) store_value(out, i, static_cast<float>(q[i]) * scale, accumulate);
      return;
    }
    case QuantScheme::int4_absmax: {
      // Byte by byte, both nibbles at once, so the loop vectorises; an odd tail is done alone.
      const auto* q = static_cast<const std::uint8_t*>(data);
      const std::size_t pairs = n / 2;
      for (std::size_t j = 0; j < pairs; ++j) {
        store_value(out, 2 * j, int4_value(q[j] & 0x0fu, scale), accumulate);
        store_value(out, 2 * j + 1, int4_value(q[j] >> 4, scale), accumulate);
      }
      if (n % 2 != 0) store_value(out, n - 1, int4_value(q[pairs] & 0x0fu, scale), accumulate);
      return;
    }
    case QuantScheme::uint8_minmax: {
      const auto* q = static_cast<const std::uint8_t*>(data);
      for (std::size_t i = 0; i < n; ++i) {
        store_value(out, i, static_cast<float>(q[i]) * scale + zero_point, accumulate);
      }
      return;
    }
  }
}

inline void dequantize_block_any(const void* data, float scale, float zero_point, std::size_t n, QuantScheme scheme,
                                 void* out, DType out_dtype, bool accumulate) {
  visit_float_dtype(out_dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    dequantize_typed(data, scale, zero_point, n, scheme, static_cast<T*>(out), accumulate);
  });
}

}  // namespace pycomm::kernels::PYCOMM_KERNEL_ISA
