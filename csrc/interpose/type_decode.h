// Turning an MPI datatype handle into pycomm's type IR, through MPI's own description of it
// (MPI_Type_get_envelope / MPI_Type_get_contents, the _c large-count forms where the library has
// them: mpi4py 4 builds every type with the large-count constructors).
#pragma once

#include "datatype/type.h"
#include "interpose/mpi_api.h"

namespace pycomm::interpose {

// The pycomm type equal to `handle`, or null when there is none that is exact: Fortran
// parameterised types, predefined pair types whose extent is not their size, nesting deeper than
// a sane limit, or any disagreement between the decoded bounds and what MPI reports (size, lower
// bound, extent, true bounds are all checked against MPI at every level). Never throws.
datatype::TypeRef decode_type(MPI_Datatype handle);

}  // namespace pycomm::interpose
