// What a quantized all-reduce puts on the wire: one record per segment of elements, encoded once
// from a peer's input (or from the owner's float32 sum) and decoded by whoever needs the values.
//
//   int8   block-scaled int8 (kernels' int8_absmax): the bytes, padded to 8, then one float32
//          scale per block of kWireBlock elements
//   uint8  block-scaled uint8 (uint8_minmax): the bytes, padded to 8, then a scale and a zero
//          point per block
//   fp16 / bf16   the values as 16-bit floats, rounded to nearest even
//
// Every record's size is a multiple of 8 bytes, so records laid end to end keep their scales
// aligned.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/dtype.h"

namespace pycomm::ft {

enum class WireQuantization : std::uint8_t { none = 0, int8 = 1, uint8 = 2, fp16 = 3, bf16 = 4 };
inline constexpr std::uint8_t kWireQuantizationCount = 5;
inline constexpr std::size_t kWireBlock = 256;

WireQuantization wire_quantization_from_name(std::string_view name);
std::string_view wire_quantization_name(WireQuantization quantization);

std::size_t wire_record_bytes(WireQuantization quantization, std::uint64_t elements);

// Encodes `elements` values of the float dtype `dtype` from `source` into `record`.
void encode_record(WireQuantization quantization, const void* source, DType dtype, std::uint64_t elements,
                   unsigned char* record);

// sum (float32) += the record's values; `scratch` holds `elements` floats (used by fp16 / bf16).
void accumulate_record(WireQuantization quantization, const unsigned char* record, std::uint64_t elements, float* sum,
                       float* scratch);

// The record's values, written as `dtype` into `out`.
void decode_record(WireQuantization quantization, const unsigned char* record, std::uint64_t elements, void* out,
                   DType dtype);

}  // namespace pycomm::ft
