// Quantizer and cast loops, compiled once per instruction set (see kernel_table.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "common/half.h"
#include "kernels/element.h"
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

// Uniform in [0, 1) from (seed, element index): splitmix64's finaliser over a Weyl sequence.
inline float uniform_from_counter(std::uint64_t seed, std::uint64_t index) {
  std::uint64_t z = seed + (index + 1) * 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
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

template <typename T>
bool absmax_of_block(const T* src, std::size_t n, float* absmax) {
  float largest = 0.0f;
  int non_finite = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float magnitude = __builtin_fabsf(load_float(src, i));
    non_finite |= !(magnitude <= kFloatMax);
    largest = magnitude > largest ? magnitude : largest;
  }
  *absmax = largest;
  return non_finite == 0;
}

template <typename T>
bool range_of_block(const T* src, std::size_t n, float* low, float* high) {
  float smallest = load_float(src, 0);
  float largest = smallest;
  int non_finite = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const float x = load_float(src, i);
    non_finite |= !(__builtin_fabsf(x) <= kFloatMax);
    smallest = x < smallest ? x : smallest;
    largest = x > largest ? x : largest;
  }
  *low = smallest;
  *high = largest;
  return non_finite == 0;
}

// q = round(x / scale) clamped to [-limit, limit], written by `store(i, q)`.
template <typename T, typename Store>
void quantize_symmetric(const T* src, std::size_t n, float scale, float limit, const QuantizeOptions& options,
                        std::size_t first_element, Store store) {
  if (scale == 0.0f) {
    for (std::size_t i = 0; i < n; ++i) store(i, 0.0f);
    return;
  }
  if (options.rounding == Rounding::nearest) {
    for (std::size_t i = 0; i < n; ++i) {
      float q = round_nearest_even(load_float(src, i) / scale);
      q = q > limit ? limit : (q < -limit ? -limit : q);
      store(i, q);
    }
  } else {
    for (std::size_t i = 0; i < n; ++i) {
      float q = round_down(load_float(src, i) / scale + uniform_from_counter(options.seed, first_element + i));
      q = q > limit ? limit : (q < -limit ? -limit : q);
      store(i, q);
    }
  }
}

template <typename T>
bool quantize_block_typed(const T* src, std::size_t n, const QuantizeOptions& options, std::size_t first_element,
                          void* data, float* scale_out, float* zero_point_out) {
  switch (options.scheme) {
    case QuantScheme::int8_absmax: {
      float absmax;
      if (!absmax_of_block(src, n, &absmax)) return false;
      const float scale = absmax / 127.0f;
      auto* out = static_cast<std::int8_t*>(data);
      quantize_symmetric(src, n, scale, 127.0f, options, first_element,
                         [out](std::size_t i, float q) { out[i] = static_cast<std::int8_t>(q); });
      *scale_out = scale;
      return true;
    }
    case QuantScheme::int4_absmax: {
      float absmax;
      if (!absmax_of_block(src, n, &absmax)) return false;
      const float scale = absmax / 7.0f;
      auto* out = static_cast<std::uint8_t*>(data);
      for (std::size_t i = 0; i < (n + 1) / 2; ++i) out[i] = 0;
      quantize_symmetric(src, n, scale, 7.0f, options, first_element, [out](std::size_t i, float q) {
        const auto nibble = static_cast<std::uint8_t>(static_cast<std::int8_t>(q) & 0x0f);
        out[i / 2] = static_cast<std::uint8_t>(out[i / 2] | (i % 2 == 0 ? nibble : nibble << 4));
      });
      *scale_out = scale;
      return true;
    }
    case QuantScheme::uint8_minmax: {
      float low, high;
      if (!range_of_block(src, n, &low, &high)) return false;
      if (!(static_cast<double>(high) - low <= kFloatMax)) return false;
      const float scale = (high - low) / 255.0f;
      auto* out = static_cast<std::uint8_t*>(data);
      if (scale == 0.0f) {
        for (std::size_t i = 0; i < n; ++i) out[i] = 0;
      } else {
        for (std::size_t i = 0; i < n; ++i) {
          const float shifted = (load_float(src, i) - low) / scale;
          float q = options.rounding == Rounding::nearest
                        ? round_nearest_even(shifted)
                        : round_down(shifted + uniform_from_counter(options.seed, first_element + i));
          q = q > 255.0f ? 255.0f : (q < 0.0f ? 0.0f : q);
          out[i] = static_cast<std::uint8_t>(q);
        }
      }
      *scale_out = scale;
      *zero_point_out = low;
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

template <typename T, typename Decode>
void dequantize_into(T* out, std::size_t n, bool accumulate, Decode decode) {
  if constexpr (std::is_same_v<T, float>) {
    if (accumulate) {
      for (std::size_t i = 0; i < n; ++i) out[i] += decode(i);
      return;
    }
  }
  for (std::size_t i = 0; i < n; ++i) out[i] = Element<T>::store(static_cast<typename Element<T>::Compute>(decode(i)));
}

inline void dequantize_block_any(const void* data, float scale, float zero_point, std::size_t n, QuantScheme scheme,
                                 void* out, DType out_dtype, bool accumulate) {
  visit_float_dtype(out_dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* typed_out = static_cast<T*>(out);
    switch (scheme) {
      case QuantScheme::int8_absmax: {
        const auto* q = static_cast<const std::int8_t*>(data);
        dequantize_into(typed_out, n, accumulate, [q, scale](std::size_t i) { return static_cast<float>(q[i]) * scale; });
        return;
      }
      case QuantScheme::int4_absmax: {
        const auto* q = static_cast<const std::uint8_t*>(data);
        dequantize_into(typed_out, n, accumulate, [q, scale](std::size_t i) {
          const int byte = q[i / 2];
          const int nibble = (i % 2 == 0 ? byte : byte >> 4) & 0x0f;
          return static_cast<float>(nibble >= 8 ? nibble - 16 : nibble) * scale;
        });
        return;
      }
      case QuantScheme::uint8_minmax: {
        const auto* q = static_cast<const std::uint8_t*>(data);
        dequantize_into(typed_out, n, accumulate,
                        [q, scale, zero_point](std::size_t i) { return static_cast<float>(q[i]) * scale + zero_point; });
        return;
      }
    }
  });
}

}  // namespace pycomm::kernels::PYCOMM_KERNEL_ISA
