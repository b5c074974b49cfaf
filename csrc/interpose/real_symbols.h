// Finding the MPI library's own functions behind the wrappers.
//
// The interposer does not link libmpi: the program brings its own. Each real function is looked
// up once, at its first call, and kept. For a C program linked to libmpi, dlsym(RTLD_NEXT) finds
// it. mpi4py loads libmpi with RTLD_LOCAL, so its symbols are not in the global scope and
// RTLD_NEXT finds nothing; then the already-loaded libmpi is found among the process's objects
// (dl_iterate_phdr) and asked directly (dlopen with RTLD_NOLOAD, then dlsym).
#pragma once

namespace pycomm::interpose {

// The address of the real MPI function `name`, or null where the MPI library has none (an
// MPI-3 library has no MPI_Send_c).
void* find_real_symbol(const char* name);

}  // namespace pycomm::interpose

// The real `function` (an MPI function name), typed as mpi.h declares it; null where absent.
// Resolved once per call site: a function-local static is initialised once, thread-safely.
#define PYCOMM_REAL(function)                                                                   \
  ([]() -> decltype(&function) {                                                                \
    static decltype(&function) const resolved =                                                 \
        reinterpret_cast<decltype(&function)>(::pycomm::interpose::find_real_symbol(#function)); \
    return resolved;                                                                            \
  }())
