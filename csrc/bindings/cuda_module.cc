// pycomm._cuda: the optional CUDA part (built only when a CUDA compiler was found). Importable on
// any machine; functions that need a GPU raise NotSupportedError saying why none is usable.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>

#include "bindings/errors.h"
#include "common/error.h"
#include "datatype/cuda/pack.h"
#include "datatype/cuda/staging.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/hash.h"

namespace py = pybind11;

namespace {

using pycomm::datatype::cuda::PackPlan;
using pycomm::datatype::cuda::PinnedHostBuffer;

void* as_pointer(std::uintptr_t address) { return reinterpret_cast<void*>(address); }

// The plan copies the table, so the numpy array may go away after construction.
std::unique_ptr<PackPlan> plan_from_table(const py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>& table) {
  PYCOMM_ENFORCE(table.ndim() == 2, "the flat table must be 2-D (rows x (3 + 2 * dims)), got ", table.ndim(),
                 " dimension(s)");
  const auto width = table.shape(1);
  PYCOMM_ENFORCE(width >= 3 && (width - 3) % 2 == 0, "the flat table has ", width,
                 " columns; it needs 3 + 2 * dims (packed offset, offset, block, then count and stride per dim)");
  return std::make_unique<PackPlan>(table.data(), table.shape(0), static_cast<int>((width - 3) / 2));
}

void bind_datatype(py::module_& m) {
  py::class_<PackPlan>(m, "PackPlan",
                       "A datatype's flat table prepared for the GPU pack and unpack kernels; keeps one device "
                       "copy of the table per device")
      .def(py::init(&plan_from_table), py::arg("table"))
      .def_property_readonly("rows", &PackPlan::rows, "rows the kernels walk (rows that move bytes)")
      .def_property_readonly("dims", &PackPlan::dims, "loops per row after dropping loops of count 1")
      .def_property_readonly("packed_bytes", &PackPlan::packed_bytes)
      .def_property_readonly("span", [](const PackPlan& p) { return py::make_tuple(p.span_begin(), p.span_end()); },
                             "the bytes [begin, end) relative to the origin that the table touches")
      .def_property_readonly("smallest_block", &PackPlan::smallest_block)
      .def_property_readonly("table_alignment", &PackPlan::table_alignment)
      .def("vector_width", &PackPlan::vector_width, py::arg("origin"), py::arg("packed"),
           "bytes per access the kernels use for these two addresses (16, 8, 4, 2 or 1)")
      .def(
          "pack",
          [](const PackPlan& plan, std::uintptr_t origin, std::uintptr_t packed, std::uintptr_t stream) {
            py::gil_scoped_release release;
            plan.pack(as_pointer(origin), as_pointer(packed), stream);
          },
          py::arg("origin"), py::arg("packed"), py::arg("stream") = 0,
          "Enqueues the pack of the data at `origin` into `packed` on `stream` and returns")
      .def(
          "unpack",
          [](const PackPlan& plan, std::uintptr_t packed, std::uintptr_t origin, std::uintptr_t stream) {
            py::gil_scoped_release release;
            plan.unpack(as_pointer(packed), as_pointer(origin), stream);
          },
          py::arg("packed"), py::arg("origin"), py::arg("stream") = 0,
          "Enqueues the unpack of `packed` into the data at `origin` on `stream` and returns");

  py::class_<PinnedHostBuffer>(m, "PinnedHostBuffer", py::buffer_protocol(),
                               "Page-locked host memory mapped into every GPU's address space (a byte buffer)")
      .def(py::init([](std::size_t bytes) {
             py::gil_scoped_release release;
             return std::make_unique<PinnedHostBuffer>(bytes);
           }),
           py::arg("nbytes"))
      .def_property_readonly("host_pointer",
                             [](const PinnedHostBuffer& b) { return reinterpret_cast<std::uintptr_t>(b.host_pointer()); })
      .def_property_readonly(
          "device_pointer", [](const PinnedHostBuffer& b) { return reinterpret_cast<std::uintptr_t>(b.device_pointer()); })
      .def_property_readonly("nbytes", &PinnedHostBuffer::size)
      .def_buffer([](PinnedHostBuffer& b) {
        return py::buffer_info(b.host_pointer(), 1, py::format_descriptor<std::uint8_t>::format(), 1,
                               {static_cast<py::ssize_t>(b.size())}, {1});
      });

  m.def(
      "copy_async",
      [](std::uintptr_t destination, std::uintptr_t source, std::size_t nbytes, std::uintptr_t stream) {
        py::gil_scoped_release release;
        pycomm::datatype::cuda::copy_async(as_pointer(destination), as_pointer(source), nbytes, stream);
      },
      py::arg("destination"), py::arg("source"), py::arg("nbytes"), py::arg("stream") = 0);
  m.def(
      "synchronize",
      [](std::uintptr_t stream) {
        py::gil_scoped_release release;
        pycomm::datatype::cuda::synchronize_stream(stream);
      },
      py::arg("stream") = 0);
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "pycomm's CUDA kernels (private: use pycomm.kernels and pycomm.datatype)";
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

  bind_datatype(m);
}
