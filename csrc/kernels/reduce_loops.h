// The reduction loops, written once and compiled once per instruction set (see kernel_table.h).
// Included only by the isa_*.cc files; everything lands in their PYCOMM_KERNEL_ISA namespace.
//
// `#pragma GCC ivdep` tells the vectoriser that the only overlap it can meet is an exact alias
// (dst == src), which element-wise loops handle correctly, so it need not emit a scalar fallback.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "common/half.h"
#include "kernels/element.h"
#include "kernels/half_batch.h"
#include "kernels/reduce.h"

#ifndef PYCOMM_KERNEL_ISA
#error "reduce_loops.h is included only by an isa_*.cc file that defines PYCOMM_KERNEL_ISA"
#endif

namespace pycomm::kernels::PYCOMM_KERNEL_ISA {

// Which NaN an arithmetic operation returns (the sign of the NaN of inf - inf, the operand chosen
// when both are NaN) differs between CPU families and even between builds whose compilers order
// the operands differently. A NaN sum or product is therefore stored as the one positive quiet NaN,
// so every peer writes the same bytes. (min/max select an operand, which is the same everywhere.)
template <typename C>
C canonical_nan(C value) {
  if constexpr (std::is_floating_point_v<C>) {
    return value != value ? std::numeric_limits<C>::quiet_NaN() : value;
  } else {
    return value;
  }
}

struct SumOp {
  template <typename C>
  static C apply(C a, C b) { return canonical_nan(wrapping_add(a, b)); }
};

struct ProdOp {
  template <typename C>
  static C apply(C a, C b) { return canonical_nan(wrapping_multiply(a, b)); }
};

struct MinOp {
  template <typename C>
  static C apply(C a, C b) { return minimum(a, b); }
};

struct MaxOp {
  template <typename C>
  static C apply(C a, C b) { return maximum(a, b); }
};

// Accumulator storage type for T: float for half types, 64-bit for integer avg, T otherwise.
template <typename T, bool for_average>
using Accumulator = std::conditional_t<
    std::is_same_v<T, Half> || std::is_same_v<T, BFloat16>, float,
    std::conditional_t<for_average && std::is_integral_v<T>,
                       std::conditional_t<std::is_signed_v<T>, std::int64_t, std::uint64_t>, T>>;

// binary16 goes through float tiles converted in batches (half_batch.h): whole-vector hardware
// conversions where the build has them, instead of the element-by-element software ones.
constexpr std::size_t kHalfTile = 512;

template <typename T, typename Op>
void combine(T* out, const T* a, const T* b, std::size_t n) {
  if constexpr (std::is_same_v<T, Half>) {
    float x[kHalfTile], y[kHalfTile];
    for (std::size_t begin = 0; begin < n; begin += kHalfTile) {
      const std::size_t m = n - begin < kHalfTile ? n - begin : kHalfTile;
      halves_to_floats(a + begin, x, m);
      halves_to_floats(b + begin, y, m);
      for (std::size_t i = 0; i < m; ++i) x[i] = Op::apply(x[i], y[i]);
      floats_to_halves(x, out + begin, m);
    }
  } else {
    using E = Element<T>;
#pragma GCC ivdep
    for (std::size_t i = 0; i < n; ++i) out[i] = E::store(Op::apply(E::load(a[i]), E::load(b[i])));
  }
}

template <typename T, typename Acc>
void widen(Acc* acc, const T* src, std::size_t n) {
  if constexpr (std::is_same_v<T, Half>) {
    halves_to_floats(src, acc, n);
  } else {
#pragma GCC ivdep
    for (std::size_t i = 0; i < n; ++i) acc[i] = static_cast<Acc>(Element<T>::load(src[i]));
  }
}

template <typename T, typename Acc, typename Op>
void accumulate(Acc* acc, const T* src, std::size_t n) {
  if constexpr (std::is_same_v<T, Half>) {
    float x[kHalfTile];
    for (std::size_t begin = 0; begin < n; begin += kHalfTile) {
      const std::size_t m = n - begin < kHalfTile ? n - begin : kHalfTile;
      halves_to_floats(src + begin, x, m);
      for (std::size_t i = 0; i < m; ++i) acc[begin + i] = Op::apply(acc[begin + i], x[i]);
    }
  } else {
#pragma GCC ivdep
    for (std::size_t i = 0; i < n; ++i) acc[i] = Op::apply(acc[i], static_cast<Acc>(Element<T>::load(src[i])));
  }
}

template <typename T, typename Acc>
void narrow(T* out, const Acc* acc, std::size_t n) {
  if constexpr (std::is_same_v<T, Half>) {
    floats_to_halves(acc, out, n);
  } else {
    using E = Element<T>;
#pragma GCC ivdep
    for (std::size_t i = 0; i < n; ++i) out[i] = E::store(static_cast<typename E::Compute>(acc[i]));
  }
}

template <typename T, typename Acc>
void narrow_average(T* out, const Acc* acc, std::size_t n, std::size_t contributions) {
  const Acc divisor = static_cast<Acc>(contributions);
  if constexpr (std::is_same_v<T, Half>) {
    float x[kHalfTile];
    for (std::size_t begin = 0; begin < n; begin += kHalfTile) {
      const std::size_t m = n - begin < kHalfTile ? n - begin : kHalfTile;
      for (std::size_t i = 0; i < m; ++i) x[i] = canonical_nan(acc[begin + i] / divisor);
      floats_to_halves(x, out + begin, m);
    }
  } else {
    using E = Element<T>;
#pragma GCC ivdep
    for (std::size_t i = 0; i < n; ++i) {
      out[i] = E::store(static_cast<typename E::Compute>(canonical_nan(acc[i] / divisor)));
    }
  }
}

// Runs body(OpType{}) for a non-average op.
template <typename Body>
void visit_op(ReduceOp op, Body&& body) {
  switch (op) {
    case ReduceOp::sum: body(SumOp{}); return;
    case ReduceOp::prod: body(ProdOp{}); return;
    case ReduceOp::min: body(MinOp{}); return;
    case ReduceOp::max: body(MaxOp{}); return;
    case ReduceOp::avg: body(SumOp{}); return;  // avg accumulates a sum; finalize divides
  }
}

inline void combine_any(void* out, const void* a, const void* b, std::size_t n, DType dtype, ReduceOp op) {
  visit_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    visit_op(op, [&](auto op_tag) {
      combine<T, decltype(op_tag)>(static_cast<T*>(out), static_cast<const T*>(a), static_cast<const T*>(b), n);
    });
  });
}

inline void widen_any(void* acc, const void* src, std::size_t n, DType dtype, ReduceOp op) {
  visit_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (op == ReduceOp::avg) {
      widen<T>(static_cast<Accumulator<T, true>*>(acc), static_cast<const T*>(src), n);
    } else {
      widen<T>(static_cast<Accumulator<T, false>*>(acc), static_cast<const T*>(src), n);
    }
  });
}

inline void accumulate_any(void* acc, const void* src, std::size_t n, DType dtype, ReduceOp op) {
  visit_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    visit_op(op, [&](auto op_tag) {
      using Op = decltype(op_tag);
      if (op == ReduceOp::avg) {
        accumulate<T, Accumulator<T, true>, Op>(static_cast<Accumulator<T, true>*>(acc), static_cast<const T*>(src), n);
      } else {
        accumulate<T, Accumulator<T, false>, Op>(static_cast<Accumulator<T, false>*>(acc), static_cast<const T*>(src), n);
      }
    });
  });
}

inline void narrow_any(void* out, const void* acc, std::size_t n, DType dtype, ReduceOp op, std::size_t contributions) {
  visit_dtype(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if (op == ReduceOp::avg) {
      narrow_average<T>(static_cast<T*>(out), static_cast<const Accumulator<T, true>*>(acc), n, contributions);
    } else {
      narrow<T>(static_cast<T*>(out), static_cast<const Accumulator<T, false>*>(acc), n);
    }
  });
}

}  // namespace pycomm::kernels::PYCOMM_KERNEL_ISA
