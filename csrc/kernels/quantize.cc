#include "kernels/quantize.h"

#include <algorithm>
#include <array>
#include <atomic>

#include "common/error.h"
#include "kernels/buffers.h"
#include "kernels/kernel_table.h"
#include "kernels/parallel.h"

namespace pycomm::kernels {
namespace {

constexpr std::array<std::string_view, 3> kSchemeNames = {"int8", "int4", "uint8"};
constexpr std::size_t kNoBlock = ~std::size_t{0};

void check_float(DType dtype, const char* what) {
  PYCOMM_ENFORCE(is_floating(dtype), what, " must be a float dtype (float16, bfloat16, float32, float64), got ",
                 dtype_name(dtype));
}

std::size_t block_data_offset(QuantScheme scheme, std::size_t first_element) {
  return scheme == QuantScheme::int4_absmax ? first_element / 2 : first_element;
}

}  // namespace

QuantScheme quant_scheme_from_name(std::string_view name) {
  for (std::size_t i = 0; i < kSchemeNames.size(); ++i) {
    if (kSchemeNames[i] == name) return static_cast<QuantScheme>(i);
  }
  PYCOMM_THROW(InvalidArgument, "unsupported quantization scheme '", name, "'; supported: int8, int4, uint8");
}

std::string_view quant_scheme_name(QuantScheme scheme) {
  const auto index = static_cast<std::size_t>(scheme);
  PYCOMM_ENFORCE(index < kSchemeNames.size(), "unknown quantization scheme code ", index);
  return kSchemeNames[index];
}

Rounding rounding_from_name(std::string_view name) {
  if (name == "nearest") return Rounding::nearest;
  if (name == "stochastic") return Rounding::stochastic;
  PYCOMM_THROW(InvalidArgument, "unsupported rounding '", name, "'; supported: nearest, stochastic");
}

void validate(const QuantizeOptions& options) {
  quant_scheme_name(options.scheme);
  PYCOMM_ENFORCE(options.rounding == Rounding::nearest || options.rounding == Rounding::stochastic,
                 "unknown rounding code ", static_cast<int>(options.rounding));
  PYCOMM_ENFORCE(options.block_size > 0, "block_size must be positive");
  PYCOMM_ENFORCE(options.block_size <= (std::size_t{1} << 30), "block_size ", options.block_size,
                 " is too large (at most 2^30 elements)");
  PYCOMM_ENFORCE(options.scheme != QuantScheme::int4_absmax || options.block_size % 2 == 0,
                 "int4 packs two values a byte, so block_size must be even, got ", options.block_size);
}

std::size_t quantized_block_count(std::size_t count, std::size_t block_size) {
  PYCOMM_ENFORCE(block_size > 0, "block_size must be positive");
  return count / block_size + (count % block_size != 0);
}

std::size_t quantized_data_bytes(QuantScheme scheme, std::size_t count) {
  quant_scheme_name(scheme);
  return scheme == QuantScheme::int4_absmax ? (count + 1) / 2 : count;
}

bool has_zero_points(QuantScheme scheme) { return scheme == QuantScheme::uint8_minmax; }

void quantize(const void* src, DType src_dtype, std::size_t count, const QuantizeOptions& options, void* data,
              float* scales, float* zero_points) {
  check_float(src_dtype, "quantize: the input");
  validate(options);
  PYCOMM_ENFORCE(!has_zero_points(options.scheme) || zero_points != nullptr || count == 0,
                 "quantize: uint8 needs a zero_points buffer");
  const std::size_t item = dtype_size(src_dtype);
  const std::size_t blocks = quantized_block_count(count, options.block_size);
  const std::size_t data_bytes = quantized_data_bytes(options.scheme, count);
  const std::size_t zero_point_bytes = has_zero_points(options.scheme) ? blocks * sizeof(float) : 0;
  check_disjoint({{src, count * item, "x"},
                  {data, data_bytes, "data"},
                  {scales, blocks * sizeof(float), "scales"},
                  {zero_points, zero_point_bytes, "zero_points"}},
                 "quantize");
  const KernelTable& table = kernel_table();
  // Blocks are independent, so they are spread over threads; the first bad block is reported.
  std::atomic<std::size_t> first_bad{kNoBlock};
  parallel_ranges(count, item + 1, options.block_size, [&](std::size_t range_begin, std::size_t range_end) {
    float unused_zero_point = 0.0f;
    for (std::size_t begin = range_begin; begin < range_end; begin += options.block_size) {
      const std::size_t block = begin / options.block_size;
      const std::size_t n = std::min(options.block_size, count - begin);
      float* zero_point = has_zero_points(options.scheme) ? zero_points + block : &unused_zero_point;
      const bool finite = table.quantize_block(
          static_cast<const unsigned char*>(src) + begin * item, src_dtype, n, options, begin,
          static_cast<unsigned char*>(data) + block_data_offset(options.scheme, begin), scales + block, zero_point);
      if (!finite) {
        std::size_t seen = first_bad.load();
        while (block < seen && !first_bad.compare_exchange_weak(seen, block)) {
        }
        return;
      }
    }
  });
  const std::size_t bad = first_bad.load();
  if (bad != kNoBlock) {
    const std::size_t begin = bad * options.block_size;
    const std::size_t last = std::min(count, begin + options.block_size) - 1;
    // Blocks are scaled in float32: a float64 value beyond its range is as unusable as infinity.
    PYCOMM_THROW(InvalidArgument, "quantize: block ", bad, " (elements ", begin, "..", last,
                 ") holds a NaN or an infinity",
                 src_dtype == DType::f64 ? " or a float64 value beyond float32's range" : "",
                 options.scheme == QuantScheme::uint8_minmax ? ", or spans more than float32's range" : "",
                 "; block quantization needs finite values");
  }
}

void dequantize(const void* data, const float* scales, const float* zero_points, std::size_t count,
                QuantScheme scheme, std::size_t block_size, void* out, DType out_dtype, bool accumulate) {
  check_float(out_dtype, "dequantize: the output");
  QuantizeOptions options;
  options.scheme = scheme;
  options.block_size = block_size;
  validate(options);
  PYCOMM_ENFORCE(!accumulate || out_dtype == DType::f32, "dequantize: accumulate needs a float32 output, got ",
                 dtype_name(out_dtype));
  PYCOMM_ENFORCE(!has_zero_points(scheme) || zero_points != nullptr || count == 0,
                 "dequantize: uint8 needs zero_points");
  const std::size_t item = dtype_size(out_dtype);
  const std::size_t blocks = quantized_block_count(count, block_size);
  check_disjoint({{out, count * item, "out"},
                  {data, quantized_data_bytes(scheme, count), "data"},
                  {scales, blocks * sizeof(float), "scales"},
                  {zero_points, has_zero_points(scheme) ? blocks * sizeof(float) : 0, "zero_points"}},
                 "dequantize");
  const KernelTable& table = kernel_table();
  parallel_ranges(count, item + 1, block_size, [&](std::size_t range_begin, std::size_t range_end) {
    for (std::size_t begin = range_begin; begin < range_end; begin += block_size) {
      const std::size_t block = begin / block_size;
      const std::size_t n = std::min(block_size, count - begin);
      table.dequantize_block(static_cast<const unsigned char*>(data) + block_data_offset(scheme, begin),
                             scales[block], has_zero_points(scheme) ? zero_points[block] : 0.0f, n, scheme,
                             static_cast<unsigned char*>(out) + begin * item, out_dtype, accumulate);
    }
  });
}

void cast(void* dst, DType dst_dtype, const void* src, DType src_dtype, std::size_t count) {
  check_float(dst_dtype, "cast: the output");
  check_float(src_dtype, "cast: the input");
  const std::size_t dst_item = dtype_size(dst_dtype);
  const std::size_t src_item = dtype_size(src_dtype);
  PYCOMM_ENFORCE(!partially_overlap(dst, count * dst_item, src, count * src_item, dst_dtype == src_dtype),
                 "cast: out and x overlap", dst_dtype == src_dtype ? " without being the same buffer" : "");
  const KernelTable& table = kernel_table();
  parallel_ranges(count, dst_item + src_item, 64, [&](std::size_t begin, std::size_t end) {
    table.cast(static_cast<unsigned char*>(dst) + begin * dst_item, dst_dtype,
               static_cast<const unsigned char*>(src) + begin * src_item, src_dtype, end - begin);
  });
}

}  // namespace pycomm::kernels
