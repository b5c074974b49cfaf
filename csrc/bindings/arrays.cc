#include "bindings/arrays.h"

#include "common/error.h"

namespace py = pybind11;

namespace pycomm::bindings {
namespace {

// numpy kinds that may hold `dtype`: bfloat16 has no numpy type, so it travels as 2-byte integers
// (or ml_dtypes' void-kind bfloat16).
bool kind_matches(const py::dtype& numpy_dtype, DType dtype) {
  const char kind = numpy_dtype.kind();
  switch (dtype) {
    case DType::bf16: return kind == 'u' || kind == 'i' || (kind == 'V' && !numpy_dtype.has_fields());
    case DType::f16:
    case DType::f32:
    case DType::f64: return kind == 'f';
    default: return is_signed_integer(dtype) ? kind == 'i' : kind == 'u';
  }
}

}  // namespace

ArrayView view_array(const py::array& array, DType dtype, bool writable, std::string_view role) {
  const auto itemsize = static_cast<std::size_t>(array.itemsize());
  PYCOMM_ENFORCE(kind_matches(array.dtype(), dtype) && itemsize == dtype_size(dtype), role, ": array of numpy dtype '",
                 std::string(py::str(array.dtype())), "' cannot hold ", dtype_name(dtype));
  PYCOMM_ENFORCE(array.flags() & py::array::c_style, role, ": array must be C-contiguous");
  PYCOMM_ENFORCE(!writable || array.writeable(), role, ": array is read-only");
  const void* data = array.data();
  return ArrayView{const_cast<void*>(data), static_cast<std::size_t>(array.size()),
                   static_cast<std::size_t>(array.nbytes())};
}

ArrayView view_bytes(const py::buffer_info& info, std::string_view role) {
  std::size_t bytes = static_cast<std::size_t>(info.itemsize);
  std::ptrdiff_t expected_stride = info.itemsize;
  for (int axis = static_cast<int>(info.ndim) - 1; axis >= 0; --axis) {
    PYCOMM_ENFORCE(info.shape[axis] <= 1 || info.strides[axis] == expected_stride, role,
                   ": buffer must be C-contiguous");
    expected_stride *= info.shape[axis];
    bytes *= static_cast<std::size_t>(info.shape[axis]);
  }
  const auto itemsize = static_cast<std::size_t>(info.itemsize);
  return ArrayView{info.ptr, itemsize == 0 ? 0 : bytes / itemsize, bytes};
}

}  // namespace pycomm::bindings
