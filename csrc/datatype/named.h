// The named (predefined) MPI types as IR nodes: this platform's C sizes and alignments, MPICH's
// element kinds, and the value-and-index pairs of MPI_MINLOC/MAXLOC as structs with their holes.
// One table for everything that meets MPI names: pycomm.datatype's constants, from_mpi, and the
// interposer's decoder (which finds the name with MPI_Type_get_name).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "datatype/type.h"

namespace pycomm::datatype {

// By MPI name with or without the "MPI_" prefix ("INT", "MPI_DOUBLE_INT", "2INT"); null when the
// name is not in the table.
TypeRef named_type(std::string_view name);

// Every name of the table (without the prefix), scalars first.
const std::vector<std::string>& named_type_names();

}  // namespace pycomm::datatype
