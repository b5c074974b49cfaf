// Lookup of the real MPI functions: RTLD_NEXT first, then the libmpi that is already loaded
// privately (the mpi4py case). See real_symbols.h.
#include "interpose/real_symbols.h"

#include <dlfcn.h>
#include <link.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace pycomm::interpose {
namespace {

// The path of this library, so that a search never hands a wrapper back as the real function.
const std::string& own_path() {
  static const std::string path = [] {
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&find_real_symbol), &info) != 0 && info.dli_fname != nullptr) {
      return std::string(info.dli_fname);
    }
    return std::string();
  }();
  return path;
}

bool defined_here(void* address) {
  Dl_info info{};
  return dladdr(address, &info) != 0 && info.dli_fname != nullptr && own_path() == info.dli_fname;
}

int collect_path(struct dl_phdr_info* info, size_t, void* paths) {
  if (info->dlpi_name != nullptr && info->dlpi_name[0] != '\0') {
    static_cast<std::vector<std::string>*>(paths)->emplace_back(info->dlpi_name);
  }
  return 0;
}

bool looks_like_mpi_library(const std::string& path) {
  const auto slash = path.rfind('/');
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  return base.rfind("libmpi", 0) == 0;  // libmpi.so.12, libmpich.so.12, libmpi_abi.so ...
}

// A handle on the loaded object that defines MPI_Init, libmpi-like names first; null if none is
// loaded yet (then the next lookup searches again).
void* find_loaded_mpi_library() {
  std::vector<std::string> paths;
  dl_iterate_phdr(collect_path, &paths);
  for (const bool named_like_mpi : {true, false}) {
    for (const std::string& path : paths) {
      if (path == own_path() || looks_like_mpi_library(path) != named_like_mpi) {
        continue;
      }
      void* handle = dlopen(path.c_str(), RTLD_LAZY | RTLD_NOLOAD);
      if (handle == nullptr) {
        continue;
      }
      void* init = dlsym(handle, "MPI_Init");
      Dl_info info{};
      // The handle also searches the object's dependencies: insist that the object itself is MPI.
      if (init != nullptr && dladdr(init, &info) != 0 && info.dli_fname != nullptr && path == info.dli_fname) {
        return handle;  // kept open for the life of the process
      }
      dlclose(handle);
    }
  }
  return nullptr;
}

void* mpi_library() {
  static std::atomic<void*> handle{nullptr};
  static std::mutex searching;
  void* found = handle.load(std::memory_order_acquire);
  if (found != nullptr) {
    return found;
  }
  std::lock_guard<std::mutex> lock(searching);
  found = handle.load(std::memory_order_relaxed);
  if (found == nullptr) {
    found = find_loaded_mpi_library();
    handle.store(found, std::memory_order_release);
  }
  return found;
}

}  // namespace

void* find_real_symbol(const char* name) {
  void* next = dlsym(RTLD_NEXT, name);
  if (next != nullptr && !defined_here(next)) {
    return next;
  }
  void* library = mpi_library();
  if (library == nullptr) {
    return nullptr;
  }
  void* direct = dlsym(library, name);
  return direct != nullptr && !defined_here(direct) ? direct : nullptr;
}

}  // namespace pycomm::interpose
