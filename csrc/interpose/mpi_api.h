// The one place the interposer includes mpi.h, and the attribute that exports a wrapper.
//
// The library is built with hidden visibility (see CMakeLists.txt) so that the datatype engine
// linked into it never clashes with another copy in the same process (pycomm._core, or a second
// pycomm); only the MPI functions it replaces and its own pycomm_interpose_* entry points are
// exported.
#pragma once

// MPICH 3 and Open MPI 4 pull in their C++ bindings from mpi.h unless told not to; the wrappers
// are plain C functions.
#define MPICH_SKIP_MPICXX 1
#define OMPI_SKIP_MPICXX 1
#include <mpi.h>

#define PYCOMM_INTERPOSE_EXPORT extern "C" __attribute__((visibility("default")))
