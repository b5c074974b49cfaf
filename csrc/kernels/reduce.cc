#include "kernels/reduce.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "common/error.h"
#include "kernels/buffers.h"
#include "kernels/kernel_table.h"
#include "kernels/parallel.h"

namespace pycomm::kernels {
namespace {

constexpr std::array<std::string_view, 5> kOpNames = {"sum", "prod", "min", "max", "avg"};

// Elements per step of a chained reduction: the accumulator tile (at most 8 bytes an element)
// stays in the L1 cache while every input streams through it.
constexpr std::size_t kTileElements = 2048;

// The divisor of avg is converted to the (possibly signed 64-bit) accumulator type.
constexpr std::size_t kMaxContributions = (std::size_t{1} << 63) - 1;

// Split points of a parallel call are multiples of this many elements (whole cache lines).
constexpr std::size_t kGranule = 64;

void* offset(void* base, std::size_t elements, std::size_t item) {
  return static_cast<unsigned char*>(base) + elements * item;
}

const void* offset(const void* base, std::size_t elements, std::size_t item) {
  return static_cast<const unsigned char*>(base) + elements * item;
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
  const std::size_t item = dtype_size(dtype);
  PYCOMM_ENFORCE(!partially_overlap(dst, count * item, src, count * item, true),
                 "reduce_into: dst and src overlap without being the same buffer");
  const KernelTable& table = kernel_table();
  parallel_ranges(count, 3 * item, kGranule, [&](std::size_t begin, std::size_t end) {
    table.combine(offset(dst, begin, item), offset(dst, begin, item), offset(src, begin, item), end - begin, dtype,
                  op);
  });
}

namespace {

// reduce() over elements [begin, end) of every buffer.
void reduce_range(const KernelTable& table, void* out, const void* const* inputs, std::size_t n_inputs,
                  std::size_t begin, std::size_t end, DType dtype, ReduceOp op) {
  const std::size_t item = dtype_size(dtype);
  auto in = [&](std::size_t k, std::size_t at) { return offset(inputs[k], at, item); };

  // Same-type chains combine straight into `out` (element-wise, so `out` may be the first or second
  // input), as long as `out` is not an input read after it was written.
  bool out_read_later = false;
  for (std::size_t k = 2; k < n_inputs; ++k) out_read_later |= inputs[k] == out;
  if (accumulator_dtype(dtype, op) == dtype && op != ReduceOp::avg && n_inputs >= 2 && !out_read_later) {
    void* target = offset(out, begin, item);
    table.combine(target, in(0, begin), in(1, begin), end - begin, dtype, op);
    for (std::size_t k = 2; k < n_inputs; ++k) table.combine(target, target, in(k, begin), end - begin, dtype, op);
    return;
  }
  if (n_inputs == 1 && op != ReduceOp::avg) {
    if (out != inputs[0]) std::memcpy(offset(out, begin, item), in(0, begin), (end - begin) * item);
    return;
  }
  // Otherwise through an accumulator tile that stays in the L1 cache while every input streams in.
  alignas(64) unsigned char tile[kTileElements * 8];
  for (std::size_t at = begin; at < end; at += kTileElements) {
    const std::size_t n = std::min(kTileElements, end - at);
    table.widen(tile, in(0, at), n, dtype, op);
    for (std::size_t k = 1; k < n_inputs; ++k) table.accumulate(tile, in(k, at), n, dtype, op);
    table.narrow(offset(out, at, item), tile, n, dtype, op, n_inputs);
  }
}

}  // namespace

void reduce(void* out, const void* const* inputs, std::size_t n_inputs, std::size_t count, DType dtype, ReduceOp op) {
  check_op(dtype, op);
  PYCOMM_ENFORCE(n_inputs > 0, "reduce needs at least one input");
  const std::size_t item = dtype_size(dtype);
  for (std::size_t k = 0; k < n_inputs; ++k) {
    PYCOMM_ENFORCE(!partially_overlap(inputs[k], count * item, out, count * item, true), "reduce: input ", k,
                   " overlaps the output without being the same buffer");
  }
  const KernelTable& table = kernel_table();
  parallel_ranges(count, (n_inputs + 1) * item, kGranule, [&](std::size_t begin, std::size_t end) {
    reduce_range(table, out, inputs, n_inputs, begin, end, dtype, op);
  });
}

void widen(void* acc, const void* src, std::size_t count, DType dtype, ReduceOp op) {
  check_op(dtype, op);
  const std::size_t item = dtype_size(dtype);
  const std::size_t acc_item = dtype_size(accumulator_dtype(dtype, op));
  PYCOMM_ENFORCE(!partially_overlap(acc, count * acc_item, src, count * item, acc_item == item),
                 "widen: acc and src overlap without being the same buffer of one element type");
  const KernelTable& table = kernel_table();
  parallel_ranges(count, item + acc_item, kGranule, [&](std::size_t begin, std::size_t end) {
    table.widen(offset(acc, begin, acc_item), offset(src, begin, item), end - begin, dtype, op);
  });
}

void accumulate(void* acc, const void* src, std::size_t count, DType dtype, ReduceOp op) {
  check_op(dtype, op);
  const std::size_t item = dtype_size(dtype);
  const std::size_t acc_item = dtype_size(accumulator_dtype(dtype, op));
  PYCOMM_ENFORCE(!partially_overlap(acc, count * acc_item, src, count * item, acc_item == item),
                 "accumulate: acc and src overlap without being the same buffer of one element type");
  const KernelTable& table = kernel_table();
  parallel_ranges(count, item + 2 * acc_item, kGranule, [&](std::size_t begin, std::size_t end) {
    table.accumulate(offset(acc, begin, acc_item), offset(src, begin, item), end - begin, dtype, op);
  });
}

void finalize(void* out, const void* acc, std::size_t count, DType dtype, ReduceOp op, std::size_t contributions) {
  check_op(dtype, op);
  PYCOMM_ENFORCE(op != ReduceOp::avg || (contributions > 0 && contributions <= kMaxContributions),
                 "finalize: avg needs between 1 and 2^63 - 1 contributions, got ", contributions);
  const std::size_t item = dtype_size(dtype);
  const std::size_t acc_item = dtype_size(accumulator_dtype(dtype, op));
  PYCOMM_ENFORCE(!partially_overlap(out, count * item, acc, count * acc_item, acc_item == item),
                 "finalize: out and acc overlap without being the same buffer of one element type");
  const KernelTable& table = kernel_table();
  parallel_ranges(count, item + acc_item, kGranule, [&](std::size_t begin, std::size_t end) {
    table.narrow(offset(out, begin, item), offset(acc, begin, acc_item), end - begin, dtype, op, contributions);
  });
}

}  // namespace pycomm::kernels
