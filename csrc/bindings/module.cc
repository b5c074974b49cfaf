// pycomm._core: the private native module. pycomm re-exports what users need; nothing imports
// this module directly except the package itself and its tests.
#include <pybind11/pybind11.h>

#include "bindings/errors.h"
#include "kernels/kernel_table.h"
#include "build_config.h"

namespace py = pybind11;

namespace pycomm::bindings {
void bind_kernels(py::module_& m);
void bind_transport(py::module_& m);
void bind_ft(py::module_& m);
void bind_datatype(py::module_& m);
}

PYBIND11_MODULE(_core, m) {
  m.doc() = "pycomm's C++ core (private: use the pycomm package)";
  pycomm::bindings::register_error_translator();

  py::module_ kernels = m.def_submodule("kernels", "reductions, quantizers, casts and the content hash");
  pycomm::bindings::bind_kernels(kernels);

  py::module_ transport = m.def_submodule("transport", "frames and framed TCP connections");
  pycomm::bindings::bind_transport(transport);

  py::module_ ft = m.def_submodule("ft", "the ring engine of pycomm.ft");
  pycomm::bindings::bind_ft(ft);

  py::module_ datatype = m.def_submodule("datatype", "type IR, canonical layouts and CPU pack/unpack");
  pycomm::bindings::bind_datatype(datatype);

  m.def("build_info", [] {
    py::dict info;
    info["version"] = PYCOMM_VERSION;
    info["compiler"] = PYCOMM_COMPILER;
    info["build_type"] = PYCOMM_BUILD_TYPE;
    info["kernel_isas"] = pycomm::kernels::built_isas();
    info["mpi_headers"] = static_cast<bool>(PYCOMM_FEATURE_MPI);
    info["mpi_headers_version"] = PYCOMM_FEATURE_MPI_VERSION;
    info["mpi_headers_source"] = PYCOMM_FEATURE_MPI_SOURCE;
    info["cuda"] = static_cast<bool>(PYCOMM_FEATURE_CUDA);
    info["cuda_version"] = PYCOMM_FEATURE_CUDA_VERSION;
    return info;
  });
}
