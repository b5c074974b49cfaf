// The one place where C++ exceptions become Python exceptions (classes from pycomm.errors).
#pragma once

#include <pybind11/pybind11.h>

namespace pycomm::bindings {

void register_error_translator();

}  // namespace pycomm::bindings
