#include "ft/wire_codec.h"

#include <cstring>

#include "common/error.h"
#include "kernels/quantize.h"
#include "kernels/reduce.h"

namespace pycomm::ft {
namespace {

std::size_t padded(std::size_t bytes) { return (bytes + 7) / 8 * 8; }

kernels::QuantScheme scheme_of(WireQuantization quantization) {
  return quantization == WireQuantization::int8 ? kernels::QuantScheme::int8_absmax
                                                : kernels::QuantScheme::uint8_minmax;
}

DType half_of(WireQuantization quantization) {
  return quantization == WireQuantization::fp16 ? DType::f16 : DType::bf16;
}

// Where a block-scaled record keeps its scales and zero points.
struct BlockRecord {
  float* scales;
  float* zero_points;
};

BlockRecord block_parts(WireQuantization quantization, const unsigned char* record, std::uint64_t elements) {
  auto* base = const_cast<unsigned char*>(record);
  auto* scales = reinterpret_cast<float*>(base + padded(elements));
  const std::size_t blocks = kernels::quantized_block_count(elements, kWireBlock);
  return {scales, quantization == WireQuantization::uint8 ? scales + blocks : nullptr};
}

}  // namespace

WireQuantization wire_quantization_from_name(std::string_view name) {
  if (name == "none") return WireQuantization::none;
  if (name == "int8") return WireQuantization::int8;
  if (name == "uint8") return WireQuantization::uint8;
  if (name == "fp16") return WireQuantization::fp16;
  if (name == "bf16") return WireQuantization::bf16;
  PYCOMM_THROW(InvalidArgument, "unknown wire quantization '", name, "'; one of none, int8, uint8, fp16, bf16");
}

std::string_view wire_quantization_name(WireQuantization quantization) {
  switch (quantization) {
    case WireQuantization::none: return "none";
    case WireQuantization::int8: return "int8";
    case WireQuantization::uint8: return "uint8";
    case WireQuantization::fp16: return "fp16";
    case WireQuantization::bf16: return "bf16";
  }
  return "unknown";
}

std::size_t wire_record_bytes(WireQuantization quantization, std::uint64_t elements) {
  switch (quantization) {
    case WireQuantization::int8:
    case WireQuantization::uint8: {
      const std::size_t blocks = kernels::quantized_block_count(elements, kWireBlock);
      const std::size_t per_block = quantization == WireQuantization::uint8 ? 8 : 4;
      return padded(elements) + blocks * per_block;
    }
    case WireQuantization::fp16:
    case WireQuantization::bf16: return padded(2 * elements);
    case WireQuantization::none: break;
  }
  PYCOMM_THROW(InvalidArgument, "a record needs a wire quantization");
}

void encode_record(WireQuantization quantization, const void* source, DType dtype, std::uint64_t elements,
                   unsigned char* record) {
  // The padding is sent too: zeros, not what the scratch buffer held before.
  if (quantization == WireQuantization::fp16 || quantization == WireQuantization::bf16) {
    std::memset(record + 2 * elements, 0, padded(2 * elements) - 2 * elements);
    kernels::cast(record, half_of(quantization), source, dtype, elements);
    return;
  }
  std::memset(record + elements, 0, padded(elements) - elements);
  kernels::QuantizeOptions options;
  options.scheme = scheme_of(quantization);
  options.block_size = kWireBlock;
  const BlockRecord parts = block_parts(quantization, record, elements);
  kernels::quantize(source, dtype, elements, options, record, parts.scales, parts.zero_points);
}

void accumulate_record(WireQuantization quantization, const unsigned char* record, std::uint64_t elements, float* sum,
                       float* scratch) {
  if (quantization == WireQuantization::fp16 || quantization == WireQuantization::bf16) {
    kernels::cast(scratch, DType::f32, record, half_of(quantization), elements);
    kernels::accumulate(sum, scratch, elements, DType::f32, kernels::ReduceOp::sum);
    return;
  }
  const BlockRecord parts = block_parts(quantization, record, elements);
  kernels::dequantize(record, parts.scales, parts.zero_points, elements, scheme_of(quantization), kWireBlock, sum,
                      DType::f32, true);
}

void decode_record(WireQuantization quantization, const unsigned char* record, std::uint64_t elements, void* out,
                   DType dtype) {
  if (quantization == WireQuantization::fp16 || quantization == WireQuantization::bf16) {
    kernels::cast(out, dtype, record, half_of(quantization), elements);
    return;
  }
  const BlockRecord parts = block_parts(quantization, record, elements);
  kernels::dequantize(record, parts.scales, parts.zero_points, elements, scheme_of(quantization), kWireBlock, out,
                      dtype, false);
}

}  // namespace pycomm::ft
