#include "kernels/reduce.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "common/error.h"
#include "kernels/kernel_table.h"

namespace pycomm::kernels {
namespace {

constexpr std::array<std::string_view, 5> kOpNames = {"sum", "prod", "min", "max", "avg"};

// Elements per step of a chained reduction: the accumulator tile (at most 8 bytes an element)
// stays in the L1 cache while every input streams through it.
constexpr std::size_t kTileElements = 2048;

bool overlaps(const void* a, const void* b, std::size_t bytes) {
  const auto* x = static_cast<const unsigned char*>(a);
  const auto* y = static_cast<const unsigned char*>(b);
  return bytes != 0 && x < y + bytes && y < x + bytes;
}

void check_op(DType dtype, ReduceOp op) {
  PYCOMM_ENFORCE(static_cast<std::size_t>(op) < kOpNames.size(), "unknown reduce op code ", static_cast<int>(op));
  dtype_size(dtype);  // validates the dtype code
}

}  // namespace

ReduceOp reduce_op_from_name(std::string_view name) {
  for (std::size_t i = 0; i < kOpNames.size(); ++i) {
    if (kOpNames[i] == name) return static_cast<ReduceOp>(i);
  }
  PYCOMM_THROW(InvalidArgument, "unsupported reduce op '", name, "'; supported: sum, prod, min, max, avg");
}

std::string_view reduce_op_name(ReduceOp op) {
  check_op(DType::f32, op);
  return kOpNames[static_cast<std::size_t>(op)];
}

DType accumulator_dtype(DType dtype, ReduceOp op) {
  check_op(dtype, op);
  if (dtype == DType::f16 || dtype == DType::bf16) return DType::f32;
  if (op == ReduceOp::avg && !is_floating(dtype)) return is_signed_integer(dtype) ? DType::i64 : DType::u64;
  return dtype;
}

void reduce_into(void* dst, const void* src, std::size_t count, DType dtype, ReduceOp op) {
  check_op(dtype, op);
  PYCOMM_ENFORCE(op != ReduceOp::avg,
                 "avg is not a pairwise operation; use reduce() over all inputs, or accumulate() + finalize()");
  PYCOMM_ENFORCE(dst == src || !overlaps(dst, src, count * dtype_size(dtype)),
                 "reduce_into: dst and src overlap without being the same buffer");
  kernel_table().combine(dst, dst, src, count, dtype, op);
}

void reduce(void* out, const void* const* inputs, std::size_t n_inputs, std::size_t count, DType dtype, ReduceOp op) {
  check_op(dtype, op);
  PYCOMM_ENFORCE(n_inputs > 0, "reduce needs at least one input");
  const std::size_t bytes = count * dtype_size(dtype);
  for (std::size_t k = 0; k < n_inputs; ++k) {
    PYCOMM_ENFORCE(inputs[k] == out || !overlaps(inputs[k], out, bytes),
                   "reduce: input ", k, " overlaps the output without being the same buffer");
  }
  const KernelTable& table = kernel_table();
  const DType acc_dtype = accumulator_dtype(dtype, op);

  // Same-type chains combine straight into `out` (element-wise, so `out` may be the first or second
  // input), as long as `out` is not an input read after it was written.
  bool out_read_later = false;
  for (std::size_t k = 2; k < n_inputs; ++k) out_read_later |= inputs[k] == out;
  if (acc_dtype == dtype && op != ReduceOp::avg && n_inputs >= 2 && !out_read_later) {
    table.combine(out, inputs[0], inputs[1], count, dtype, op);
    for (std::size_t k = 2; k < n_inputs; ++k) table.combine(out, out, inputs[k], count, dtype, op);
    return;
  }
  if (n_inputs == 1 && op != ReduceOp::avg) {
    if (out != inputs[0]) std::memcpy(out, inputs[0], bytes);
    return;
  }

  alignas(64) unsigned char tile[kTileElements * 8];
  const std::size_t item = dtype_size(dtype);
  for (std::size_t begin = 0; begin < count; begin += kTileElements) {
    const std::size_t n = std::min(kTileElements, count - begin);
    auto at = [&](const void* base) { return static_cast<const unsigned char*>(base) + begin * item; };
    table.widen(tile, at(inputs[0]), n, dtype, op);
    for (std::size_t k = 1; k < n_inputs; ++k) table.accumulate(tile, at(inputs[k]), n, dtype, op);
    table.narrow(static_cast<unsigned char*>(out) + begin * item, tile, n, dtype, op, n_inputs);
  }
}

void widen(void* acc, const void* src, std::size_t count, DType dtype, ReduceOp op) {
  check_op(dtype, op);
  kernel_table().widen(acc, src, count, dtype, op);
}

void accumulate(void* acc, const void* src, std::size_t count, DType dtype, ReduceOp op) {
  check_op(dtype, op);
  kernel_table().accumulate(acc, src, count, dtype, op);
}

void finalize(void* out, const void* acc, std::size_t count, DType dtype, ReduceOp op, std::size_t contributions) {
  check_op(dtype, op);
  PYCOMM_ENFORCE(op != ReduceOp::avg || contributions > 0, "finalize: avg needs at least one contribution");
  kernel_table().narrow(out, acc, count, dtype, op, contributions);
}

}  // namespace pycomm::kernels
