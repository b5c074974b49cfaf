#include "kernels/kernel_table.h"

#include <cstdlib>
#include <string_view>

namespace pycomm::kernels {
namespace {

KernelTable select_table() {
  const char* forced = std::getenv("PYCOMM_KERNEL_ISA");
  if (forced != nullptr && std::string_view(forced) == "baseline") return baseline::make_table();
#if defined(PYCOMM_HAVE_X86_64_V3) && (defined(__x86_64__) || defined(_M_X64))
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("bmi2")) {
    return x86_64_v3::make_table();
  }
#endif
  return baseline::make_table();
}

}  // namespace

const KernelTable& kernel_table() {
  static const KernelTable table = select_table();
  return table;
}

}  // namespace pycomm::kernels
