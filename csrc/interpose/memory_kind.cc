// Device-pointer detection through the CUDA driver's cuPointerGetAttribute, when libcuda is loaded.
#include "interpose/memory_kind.h"

#include <dlfcn.h>
#include <link.h>

#include <atomic>

namespace pycomm::interpose {
namespace {

// The few driver API values used here (cuda.h is not needed to build the interposer).
constexpr int kCudaSuccess = 0;
constexpr int kPointerAttributeMemoryType = 2;  // CU_POINTER_ATTRIBUTE_MEMORY_TYPE
constexpr int kPointerAttributeIsManaged = 9;   // CU_POINTER_ATTRIBUTE_IS_MANAGED
constexpr unsigned kMemoryTypeDevice = 2;       // CU_MEMORYTYPE_DEVICE

using PointerGetAttribute = int (*)(void* data, int attribute, unsigned long long pointer);

int read_load_count(struct dl_phdr_info* info, size_t, void* load_count) {
  *static_cast<unsigned long long*>(load_count) = info->dlpi_adds;
  return 1;  // the count is the same in every entry: the first one is enough
}

// How many objects the process has loaded so far (dlpi_adds only grows).
unsigned long long objects_loaded() {
  unsigned long long load_count = 0;
  dl_iterate_phdr(read_load_count, &load_count);
  return load_count;
}

// Looked up again whenever the process has loaded more objects, until libcuda appears (a program
// may load CUDA after its first MPI call); once found it is kept. dlopen with RTLD_NOLOAD finds a
// library loaded RTLD_LOCAL too.
PointerGetAttribute pointer_get_attribute() {
  static std::atomic<PointerGetAttribute> found{nullptr};
  static std::atomic<unsigned long long> searched_at{~0ULL};
  PointerGetAttribute function = found.load(std::memory_order_acquire);
  if (function != nullptr) {
    return function;
  }
  const unsigned long long loaded = objects_loaded();
  if (searched_at.exchange(loaded, std::memory_order_relaxed) == loaded) {
    return nullptr;
  }
  void* library = dlopen("libcuda.so.1", RTLD_LAZY | RTLD_NOLOAD);
  if (library == nullptr) {
    return nullptr;
  }
  function = reinterpret_cast<PointerGetAttribute>(dlsym(library, "cuPointerGetAttribute"));
  found.store(function, std::memory_order_release);
  return function;  // the handle stays open: the library is loaded anyway
}

}  // namespace

bool is_device_memory(const void* address) {
  const PointerGetAttribute get_attribute = pointer_get_attribute();
  if (get_attribute == nullptr || address == nullptr) {
    return false;
  }
  const auto pointer = reinterpret_cast<unsigned long long>(address);
  unsigned memory_type = 0;
  if (get_attribute(&memory_type, kPointerAttributeMemoryType, pointer) != kCudaSuccess ||
      memory_type != kMemoryTypeDevice) {
    return false;  // host memory the driver does not know, or pinned host memory
  }
  unsigned managed = 0;
  return get_attribute(&managed, kPointerAttributeIsManaged, pointer) != kCudaSuccess || managed == 0;
}

}  // namespace pycomm::interpose
