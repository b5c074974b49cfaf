// IEEE binary16 and bfloat16 storage types with branch-free conversions to and from float.
//
// The conversions are written as integer bit manipulation with selects rather than with F16C
// intrinsics so that the compiler vectorises them on every target (the kernels are compiled once
// per instruction set, see csrc/kernels/kernel_table.h) and every target gives the same bytes.
// Rounding is to nearest, ties to even; a float too large for binary16 becomes infinity, as IEEE 754
// prescribes. The binary16 conversions give exactly what x86's F16C instructions give, NaNs
// included (made quiet; the payload's top bits kept), so a build may use either.
#pragma once

#include <cstdint>
#include <cstring>

// Always inlined: the kernels are compiled once per instruction set, and an out-of-line copy built
// for one set must never be what the linker hands to code built for another.
#if defined(__GNUC__)
#define PYCOMM_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define PYCOMM_ALWAYS_INLINE inline
#endif

namespace pycomm {

struct Half {
  std::uint16_t bits;
};

struct BFloat16 {
  std::uint16_t bits;
};

PYCOMM_ALWAYS_INLINE std::uint32_t float_bits(float value) {
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof bits);
  return bits;
}

PYCOMM_ALWAYS_INLINE float bits_float(std::uint32_t bits) {
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

PYCOMM_ALWAYS_INLINE float half_to_float(Half h) {
  const std::uint32_t sign = static_cast<std::uint32_t>(h.bits & 0x8000u) << 16;
  const std::uint32_t shifted = static_cast<std::uint32_t>(h.bits & 0x7fffu) << 13;
  const std::uint32_t exponent = shifted & 0x0f800000u;
  // Rebias the exponent from 15 to 127; infinities and NaNs get the remaining bias too, and a NaN
  // becomes quiet (its payload kept), as the F16C instruction does.
  std::uint32_t rebiased = shifted + 0x38000000u;
  const std::uint32_t quiet = shifted > 0x0f800000u ? 0x00400000u : 0u;
  rebiased = exponent == 0x0f800000u ? (rebiased + 0x38000000u) | quiet : rebiased;
  // Zero and subnormals: let the FPU normalise by subtracting 2^-14.
  const float subnormal = bits_float(rebiased + 0x00800000u) - bits_float(0x38800000u);
  const std::uint32_t magnitude = exponent == 0 ? float_bits(subnormal) : rebiased;
  return bits_float(magnitude | sign);
}

PYCOMM_ALWAYS_INLINE Half float_to_half(float value) {
  std::uint32_t bits = float_bits(value);
  const std::uint32_t sign = bits & 0x80000000u;
  bits ^= sign;
  // Too large for binary16 (or already inf/NaN): infinity, or a quiet NaN keeping the top of the
  // payload, as the F16C instruction does.
  const std::uint32_t overflow = bits > 0x7f800000u ? 0x7e00u | ((bits >> 13) & 0x3ffu) : 0x7c00u;
  // Below the smallest normal half: adding a magic float lets the FPU round the subnormal.
  const std::uint32_t subnormal = float_bits(bits_float(bits) + bits_float(0x3f000000u)) - 0x3f000000u;
  // Normal range: rebias and round the 13 dropped mantissa bits to nearest even.
  const std::uint32_t odd = (bits >> 13) & 1u;
  const std::uint32_t normal = (bits + 0xc8000fffu + odd) >> 13;
  std::uint32_t result = bits < 0x38800000u ? subnormal : normal;
  result = bits >= 0x47800000u ? overflow : result;
  return Half{static_cast<std::uint16_t>(result | (sign >> 16))};
}

PYCOMM_ALWAYS_INLINE float bfloat16_to_float(BFloat16 b) { return bits_float(static_cast<std::uint32_t>(b.bits) << 16); }

PYCOMM_ALWAYS_INLINE BFloat16 float_to_bfloat16(float value) {
  const std::uint32_t bits = float_bits(value);
  const std::uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
  const std::uint32_t quiet_nan = (bits >> 16) | 0x0040u;
  const bool is_nan = (bits & 0x7fffffffu) > 0x7f800000u;
  return BFloat16{static_cast<std::uint16_t>(is_nan ? quiet_nan : rounded)};
}

}  // namespace pycomm
