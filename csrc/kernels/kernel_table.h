// Runtime choice of instruction set for the byte kernels.
//
// The loops in *_loops.h are compiled once per instruction set (isa_baseline.cc for the build
// target; isa_x86_64_v3.cc for AVX2 + F16C + FMA and isa_x86_64_v4.cc for AVX-512, where the
// compiler supports them). At first use the best set the CPU supports is picked and its table is
// used for the life of the process. Every set computes the same bytes: the build uses
// -ffp-contract=off, so no set fuses a multiply-add that another rounds twice.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/dtype.h"
#include "kernels/quantize.h"
#include "kernels/reduce.h"

namespace pycomm::kernels {

struct KernelTable {
  std::string_view isa;

  void (*combine)(void* out, const void* a, const void* b, std::size_t count, DType dtype, ReduceOp op);
  void (*widen)(void* acc, const void* src, std::size_t count, DType dtype, ReduceOp op);
  void (*accumulate)(void* acc, const void* src, std::size_t count, DType dtype, ReduceOp op);
  void (*narrow)(void* out, const void* acc, std::size_t count, DType dtype, ReduceOp op, std::size_t contributions);

  void (*cast)(void* dst, DType dst_dtype, const void* src, DType src_dtype, std::size_t count);
  // Returns false when the block holds a NaN or an infinity; nothing is written for that block then.
  bool (*quantize_block)(const void* src, DType src_dtype, std::size_t count, const QuantizeOptions& options,
                         std::size_t first_element, void* data, float* scale, float* zero_point);
  void (*dequantize_block)(const void* data, float scale, float zero_point, std::size_t count,
                           QuantScheme scheme, void* out, DType out_dtype, bool accumulate);

  std::uint64_t (*hash_leaf)(const unsigned char* bytes, std::size_t length, std::uint64_t leaf_index,
                             std::uint64_t seed);
};

// The table for the best instruction set this CPU supports. PYCOMM_KERNEL_ISA=<name> picks another
// (baseline, x86-64-v3, x86-64-v4), for comparisons; NotSupported if it cannot run here.
const KernelTable& kernel_table();

// Comma-separated names: every instruction set in this build / those this CPU can run.
std::string built_isas();
std::string runnable_isas();

namespace baseline {
KernelTable make_table();
}
namespace x86_64_v3 {
KernelTable make_table();
}
namespace x86_64_v4 {
KernelTable make_table();
}

}  // namespace pycomm::kernels
