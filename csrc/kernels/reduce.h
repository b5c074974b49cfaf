// Element-wise reductions on every dtype, the byte work under every collective.
//
// Rules (the same on every machine, so every peer computes identical bytes):
//   - float16/bfloat16 compute in float32 and round to nearest even when stored; a chained
//     reduction (reduce(), or accumulate() + finalize()) keeps the float32 sum and rounds once;
//   - integers wrap around on overflow, as numpy does; avg sums integers in 64 bits and divides
//     with truncation toward zero;
//   - min/max follow numpy: a NaN in either operand wins (the first when both are), and on a tie the
//     first operand is kept, so min(+0, -0) is +0 (numpy's own choice there varies with its build);
//   - a sum, product or average that is NaN is stored as the positive quiet NaN: CPUs disagree on
//     which NaN an operation returns, and the bytes must not (a sum, prod, min or max of one input
//     is a copy; an avg of one is divided by 1, so its NaNs become that NaN too);
//   - the 64-bit sum of an integer avg wraps, so int64/uint64 averages near the limits overflow;
//   - inputs are combined strictly left to right.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "common/dtype.h"

namespace pycomm::kernels {

enum class ReduceOp : std::uint8_t { sum = 0, prod = 1, min = 2, max = 3, avg = 4 };

ReduceOp reduce_op_from_name(std::string_view name);
std::string_view reduce_op_name(ReduceOp op);

// The type a chained reduction of `dtype` accumulates in.
DType accumulator_dtype(DType dtype, ReduceOp op);

// dst = dst (op) src for `count` elements. `op` must not be avg (avg is only defined for a chain).
// dst and src are the same buffer or do not overlap.
void reduce_into(void* dst, const void* src, std::size_t count, DType dtype, ReduceOp op);

// out = inputs[0] (op) inputs[1] (op) ... with float32 accumulation for half types; avg divides the
// sum by n_inputs. `out` may be any of the inputs; inputs must otherwise not overlap `out`.
void reduce(void* out, const void* const* inputs, std::size_t n_inputs, std::size_t count, DType dtype,
            ReduceOp op);

// Streaming form of reduce() for inputs that arrive one at a time: `acc` holds
// accumulator_dtype(dtype, op) elements. widen() starts the chain with the first input,
// accumulate() adds the next, finalize() stores the result as `dtype` (avg divides by contributions).
void widen(void* acc, const void* src, std::size_t count, DType dtype, ReduceOp op);
void accumulate(void* acc, const void* src, std::size_t count, DType dtype, ReduceOp op);
void finalize(void* out, const void* acc, std::size_t count, DType dtype, ReduceOp op, std::size_t contributions);

}  // namespace pycomm::kernels
