// Block-scaled quantizers and float casts: what goes on the wire when a collective is quantized.
//
// Each block of `block_size` consecutive elements gets its own float32 scale:
//   int8_absmax   q in [-127, 127],  x ~ q * scale,               scale = absmax / 127
//   int4_absmax   q in [-7, 7], two per byte (element 2i in the low nibble), scale = absmax / 7
//   uint8_minmax  q in [0, 255],    x ~ q * scale + zero_point,  scale = (max - min) / 255,
//                                                                 zero_point = min
// Rounding is to nearest (ties to even), so a round trip errs by at most scale / 2 per element,
// or, with stochastic rounding, by less than scale (unbiased, and a value on the grid stays put; the
// random stream is a pure function of the seed and the element index, so every peer and the GPU
// draw the same numbers). Both bounds are up to float32 rounding, which for a block of subnormals
// (whose scale is itself coarsely rounded) can add up to limit / 2 ulps of the scale.
// A block of zeros gets scale 0 and is reproduced exactly; so, in uint8, does a block of one
// repeated value (its zero point). A block holding a NaN or an infinity cannot be scaled:
// quantize() throws InvalidArgument naming the block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/dtype.h"

namespace pycomm::kernels {

enum class QuantScheme : std::uint8_t { int8_absmax = 0, int4_absmax = 1, uint8_minmax = 2 };
enum class Rounding : std::uint8_t { nearest = 0, stochastic = 1 };

QuantScheme quant_scheme_from_name(std::string_view name);
std::string_view quant_scheme_name(QuantScheme scheme);
Rounding rounding_from_name(std::string_view name);

struct QuantizeOptions {
  QuantScheme scheme = QuantScheme::int8_absmax;
  std::size_t block_size = 256;  // elements; even for int4 so a block never splits a byte
  Rounding rounding = Rounding::nearest;
  std::uint64_t seed = 0;
};

void validate(const QuantizeOptions& options);
std::size_t quantized_block_count(std::size_t count, std::size_t block_size);
std::size_t quantized_data_bytes(QuantScheme scheme, std::size_t count);
bool has_zero_points(QuantScheme scheme);

// src: `count` elements of a float dtype. data: quantized_data_bytes(); scales (and zero_points
// for uint8_minmax, else may be null): quantized_block_count() floats.
void quantize(const void* src, DType src_dtype, std::size_t count, const QuantizeOptions& options, void* data,
              float* scales, float* zero_points);

// out (a float dtype) = dequantized values; with accumulate, out must be float32 and
// out += dequantized values (dequantize once, sum in float32).
void dequantize(const void* data, const float* scales, const float* zero_points, std::size_t count,
                QuantScheme scheme, std::size_t block_size, void* out, DType out_dtype, bool accumulate);

// Converts between float dtypes (float16, bfloat16, float32, float64), rounding to nearest even.
// float64 to a 16-bit type rounds once (through float32 with round-to-odd), as a direct
// conversion would.
void cast(void* dst, DType dst_dtype, const void* src, DType src_dtype, std::size_t count);

}  // namespace pycomm::kernels
