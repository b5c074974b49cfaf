#include "kernels/kernel_table.h"

#include <cstdlib>
#include <string>
#include <string_view>

#include "common/error.h"

namespace pycomm::kernels {
namespace {

using TableMaker = KernelTable (*)();

struct Isa {
  std::string_view name;
  TableMaker make;
  bool (*supported)();
};

bool always() { return true; }

#if defined(__x86_64__) || defined(_M_X64)
// The whole feature level the compiler may use with -march=x86-64-vN, not just its headline parts.
bool cpu_has_x86_64_v3() {
  __builtin_cpu_init();
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
  return __builtin_cpu_supports("x86-64-v3");
#else
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("movbe");
#endif
}

bool cpu_has_x86_64_v4() {
  __builtin_cpu_init();
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
  return __builtin_cpu_supports("x86-64-v4");
#else
  return cpu_has_x86_64_v3() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
         __builtin_cpu_supports("avx512cd");
#endif
}
#endif

// Built instruction sets, best first.
const Isa kBuilt[] = {
#if defined(PYCOMM_HAVE_X86_64_V4) && (defined(__x86_64__) || defined(_M_X64))
    {"x86-64-v4", x86_64_v4::make_table, cpu_has_x86_64_v4},
#endif
#if defined(PYCOMM_HAVE_X86_64_V3) && (defined(__x86_64__) || defined(_M_X64))
    {"x86-64-v3", x86_64_v3::make_table, cpu_has_x86_64_v3},
#endif
    {"baseline", baseline::make_table, always},
};

KernelTable select_table() {
  const char* forced = std::getenv("PYCOMM_KERNEL_ISA");
  for (const Isa& isa : kBuilt) {
    if (forced != nullptr && *forced != '\0' && isa.name != forced) continue;
    if (isa.supported()) return isa.make();
    if (forced != nullptr && *forced != '\0') {
      PYCOMM_THROW(NotSupported, "PYCOMM_KERNEL_ISA=", forced, ": this CPU cannot run that instruction set");
    }
  }
  PYCOMM_THROW(NotSupported, "PYCOMM_KERNEL_ISA=", forced, " is not an instruction set of this build; built: ",
               built_isas());
}

}  // namespace

std::string built_isas() {
  std::string names;
  for (const Isa& isa : kBuilt) names += (names.empty() ? "" : ",") + std::string(isa.name);
  return names;
}

std::string runnable_isas() {
  std::string names;
  for (const Isa& isa : kBuilt) {
    if (isa.supported()) names += (names.empty() ? "" : ",") + std::string(isa.name);
  }
  return names;
}

const KernelTable& kernel_table() {
  static const KernelTable table = select_table();
  return table;
}

}  // namespace pycomm::kernels
