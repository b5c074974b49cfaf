// pycomm._cuda: the optional CUDA part (built only when a CUDA compiler was found). Importable on
// any machine; functions that need a GPU raise NotSupportedError saying why none is usable.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bindings/errors.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/hash.h"

namespace py = pybind11;

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pycomm's CUDA kernels (private: use pycomm.kernels)";
  pycomm::bindings::register_error_translator();

  m.def("runtime_status", [] {
    const auto status = pycomm::kernels::cuda::runtime_status();
    py::dict result;
    result["devices"] = status.devices;
    result["runtime_version"] = status.runtime_version;
    result["driver_version"] = status.driver_version;
    result["device_name"] = status.devices > 0 ? py::object(py::str(status.first_device)) : py::none();
    if (!status.reason.empty()) result["reason"] = status.reason;
    return result;
  });

  m.def(
      "hash64",
      [](std::uintptr_t device_pointer, std::size_t length, std::uint64_t seed, std::uintptr_t stream) {
        py::gil_scoped_release release;
        return pycomm::kernels::cuda::hash64_device(reinterpret_cast<const void*>(device_pointer), length, seed,
                                                    stream);
      },
      py::arg("device_pointer"), py::arg("length"), py::arg("seed") = 0, py::arg("stream") = 0);
}
