// Checked views of numpy arrays for the kernels: the dtype the caller names must match the array's
// storage, the array must be C-contiguous, and an output must be writeable.
#pragma once

#include <pybind11/numpy.h>

#include <cstddef>
#include <string_view>

#include "common/dtype.h"

namespace pycomm::bindings {

struct ArrayView {
  void* data;
  std::size_t count;  // elements
  std::size_t bytes;
};

// `role` names the argument in error messages ("out", "inputs[2]").
ArrayView view_array(const pybind11::array& array, DType dtype, bool writable, std::string_view role);

// Any C-contiguous buffer, as bytes (for hashing). `info` owns the buffer: keep it alive while the
// view is used.
ArrayView view_bytes(const pybind11::buffer_info& info, std::string_view role);

}  // namespace pycomm::bindings
