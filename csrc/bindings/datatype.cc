// pycomm._core.datatype: the type IR, its canonical layout and CPU pack/unpack, for
// pycomm.datatype (which names the MPI types and decodes mpi4py's) and the benchmarks. Buffers are
// checked here against the bytes the layout touches before any byte is copied; the copies run
// without the GIL.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "common/error.h"
#include "datatype/named.h"
#include "datatype/pack.h"
#include "datatype/type.h"

namespace py = pybind11;

namespace pycomm::bindings {
namespace {

using datatype::Combiner;
using datatype::Distribution;
using datatype::Layout;
using datatype::Objects;
using datatype::Order;
using datatype::Type;
using datatype::TypeRef;

// pybind11 holds types as shared_ptr<Type>; the IR hands out shared_ptr<const Type>.
using Holder = std::shared_ptr<Type>;
Holder hold(TypeRef type) { return std::const_pointer_cast<Type>(std::move(type)); }

Order order_from_name(const std::string& name) {
  if (name == "C" || name == "c") return Order::c;
  if (name == "F" || name == "f" || name == "fortran" || name == "Fortran") return Order::fortran;
  PYCOMM_THROW(InvalidArgument, "order must be 'C' or 'F', got '", name, "'");
}

Distribution distribution_from_name(const std::string& name) {
  if (name == "block") return Distribution::block;
  if (name == "cyclic") return Distribution::cyclic;
  if (name == "none") return Distribution::none;
  PYCOMM_THROW(InvalidArgument, "distribution must be 'block', 'cyclic' or 'none', got '", name, "'");
}

void check_count(std::int64_t count) { PYCOMM_ENFORCE(count >= 0, "count must be >= 0, got ", count); }

// `count` objects of `type`, checked to fit 64-bit byte arithmetic.
Objects checked_objects(const Type& type, std::int64_t count) {
  check_count(count);
  const Objects objects{&type.layout(), count, type.extent()};
  PYCOMM_ENFORCE(datatype::fits_in_64_bits(objects), count, " objects of this type (", type.size(),
                 " bytes each, extent ", type.extent(), ") do not fit 64-bit byte offsets");
  return objects;
}

// max_bytes < 0 asks for everything from `first` on (what the Python layer passes by default, so it
// need not look up the type's size first).
std::int64_t bytes_wanted(const Objects& objects, std::int64_t first, std::int64_t max_bytes) {
  PYCOMM_ENFORCE(first >= 0, "first must be >= 0, got ", first);
  const std::int64_t rest = std::max<std::int64_t>(objects.packed_bytes() - first, 0);
  return max_bytes < 0 ? rest : std::min(max_bytes, rest);
}

// The bytes of a C-contiguous buffer (any object exporting one), held for one call. Lighter than
// py::buffer_info, which copies shape and strides: that shows in kilobyte packs.
class ContiguousBytes {
 public:
  ContiguousBytes(py::handle object, bool writable, const char* role) {
    const int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(object.ptr(), &view_, flags) != 0) {
      const py::error_already_set error;  // takes the exporter's reason (read-only, not contiguous)
      PYCOMM_THROW(InvalidArgument, role, ": ", error.what(), " (a C-contiguous", writable ? ", writable" : "",
                   " buffer is needed)");
    }
  }
  ~ContiguousBytes() { PyBuffer_Release(&view_); }
  ContiguousBytes(const ContiguousBytes&) = delete;
  ContiguousBytes& operator=(const ContiguousBytes&) = delete;

  std::byte* data() const { return static_cast<std::byte*>(view_.buf); }
  std::int64_t bytes() const { return static_cast<std::int64_t>(view_.len); }

 private:
  Py_buffer view_{};
};

// The origin inside `buffer`, checked to leave every byte that `objects` of `type` touch inside it
// when the origin lies `origin_offset` bytes in.
std::byte* checked_origin(const ContiguousBytes& buffer, const Type& type, const Objects& objects,
                          std::int64_t origin_offset, const char* role) {
  const datatype::Span touched = datatype::span(objects, type.touched());
  const std::int64_t bytes = buffer.bytes();
  if (touched.begin < touched.end) {
    PYCOMM_ENFORCE(origin_offset + touched.begin >= 0 && origin_offset + touched.end <= bytes, role,
                   " is too small: ", objects.count, " object(s) of this type touch bytes [", touched.begin, ", ",
                   touched.end, ") from the origin, which lies ", origin_offset, " bytes into a buffer of ", bytes,
                   " bytes");
  }
  return buffer.data() + origin_offset;
}

py::object strided_form(const Type& type) {
  const Layout& layout = type.layout();
  if (layout.segments.empty()) {
    py::dict empty;
    empty["offset"] = 0;
    empty["block"] = 0;
    empty["counts"] = py::list();
    empty["strides"] = py::list();
    return std::move(empty);
  }
  if (!layout.is_strided_block()) return py::none();
  const auto& segment = layout.segments[0];
  py::dict form;
  form["offset"] = segment.offset;
  form["block"] = segment.block;
  py::list counts, strides;
  for (const auto& dim : segment.dims) {
    counts.append(dim.count);
    strides.append(dim.stride);
  }
  form["counts"] = counts;
  form["strides"] = strides;
  return std::move(form);
}

// One row per strided piece of `count` objects: [packed offset, offset, block, (count, stride) per
// loop, outermost first, padded on the outside with (1, 0)]. What the GPU kernels walk.
py::array_t<std::int64_t> flat_table(const Type& type, std::int64_t count, std::int64_t max_rows) {
  checked_objects(type, count);
  const Layout layout = datatype::repeat_layout(type.layout(), count, type.extent());
  const auto blocks = datatype::flatten_layout(layout, max_rows);
  std::size_t dims = 1;
  for (const auto& block : blocks) dims = std::max(dims, block.dims.size());
  py::array_t<std::int64_t> table({blocks.size(), 3 + 2 * dims});
  auto rows = table.mutable_unchecked<2>();
  for (std::size_t r = 0; r < blocks.size(); ++r) {
    const auto& block = blocks[r];
    rows(r, 0) = block.packed_offset;
    rows(r, 1) = block.offset;
    rows(r, 2) = block.block;
    const std::size_t pad = dims - block.dims.size();
    for (std::size_t d = 0; d < dims; ++d) {
      const bool real = d >= pad;
      rows(r, 3 + 2 * d) = real ? block.dims[d - pad].count : 1;
      rows(r, 4 + 2 * d) = real ? block.dims[d - pad].stride : 0;
    }
  }
  return table;
}

}  // namespace

void bind_datatype_fast(py::module_& m);

void bind_datatype(py::module_& m) {
  bind_datatype_fast(m);
  py::class_<Type, Holder> type(m, "Type", "A node of the type IR (immutable); its canonical layout is cached");
  type.def_property_readonly("combiner", [](const Type& t) { return std::string(datatype::combiner_name(t.combiner())); })
      .def_property_readonly("name", &Type::name)
      .def_property_readonly("element_kind", &Type::element_kind)
      .def_property_readonly("size", [](const Type& t) { return t.bounds().size; })
      .def_property_readonly("lb", [](const Type& t) { return t.bounds().lb; })
      .def_property_readonly("ub", [](const Type& t) { return t.bounds().ub; })
      .def_property_readonly("extent", [](const Type& t) { return t.bounds().extent(); })
      .def_property_readonly("true_lb", [](const Type& t) { return t.bounds().true_lb; })
      .def_property_readonly("true_extent", [](const Type& t) { return t.bounds().true_extent(); })
      .def_property_readonly("alignment", [](const Type& t) { return t.bounds().alignment; })
      .def_property_readonly("depth", &Type::depth)
      .def_property_readonly("integers", &Type::integers)
      .def_property_readonly("children",
                             [](const Type& t) {
                               std::vector<Holder> children;
                               for (const auto& child : t.children()) children.push_back(hold(child));
                               return children;
                             })
      .def("commit",
           [](const Type& t) {
             py::gil_scoped_release release;
             t.layout();
           },
           "Computes and caches the canonical layout")
      .def("strided", &strided_form, "The N-D strided block form, or None where the layout has several pieces")
      .def("describe_layout", [](const Type& t) { return t.layout().describe(); })
      .def("layout_stats",
           [](const Type& t) {
             const Layout& layout = t.layout();
             py::dict stats;
             stats["segments"] = layout.segments.size();
             stats["blocks"] = layout.block_count();
             stats["smallest_block"] = layout.smallest_block();
             stats["strided_block"] = layout.is_strided_block() || layout.segments.empty();
             return stats;
           })
      .def("flat_table", &flat_table, py::arg("count") = 1, py::arg("max_rows") = std::int64_t{1} << 22)
      .def("span",
           [](const Type& t, std::int64_t count) {
             const auto touched = datatype::span(checked_objects(t, count), t.touched());
             return py::make_tuple(touched.begin, touched.end);
           },
           py::arg("count") = 1);

  m.def("named", [](const std::string& name, std::int64_t size, std::int64_t alignment, const std::string& kind) {
    return hold(Type::named(name, size, alignment, kind));
  });
  m.def("named_pair", [](const std::string& name, Holder value, Holder index) {
    return hold(Type::named_pair(name, value, index));
  });
  m.def("named_type_names", &datatype::named_type_names, "The MPI names of the named-type table");
  m.def("named_type", [](const std::string& name) {
    TypeRef type = datatype::named_type(name);
    PYCOMM_ENFORCE(type != nullptr, "no named MPI type called '", name, "'");
    return hold(std::move(type));
  });
  m.def("contiguous", [](std::int64_t count, Holder old) { return hold(Type::contiguous(count, old)); });
  m.def("vector", [](std::int64_t count, std::int64_t blocklength, std::int64_t stride, Holder old) {
    return hold(Type::vector(count, blocklength, stride, old));
  });
  m.def("hvector", [](std::int64_t count, std::int64_t blocklength, std::int64_t stride, Holder old) {
    return hold(Type::hvector(count, blocklength, stride, old));
  });
  m.def("indexed", [](std::vector<std::int64_t> blocklengths, std::vector<std::int64_t> displacements, Holder old) {
    return hold(Type::indexed(std::move(blocklengths), std::move(displacements), old));
  });
  m.def("hindexed", [](std::vector<std::int64_t> blocklengths, std::vector<std::int64_t> displacements, Holder old) {
    return hold(Type::hindexed(std::move(blocklengths), std::move(displacements), old));
  });
  m.def("indexed_block", [](std::int64_t blocklength, std::vector<std::int64_t> displacements, Holder old) {
    return hold(Type::indexed_block(blocklength, std::move(displacements), old));
  });
  m.def("hindexed_block", [](std::int64_t blocklength, std::vector<std::int64_t> displacements, Holder old) {
    return hold(Type::hindexed_block(blocklength, std::move(displacements), old));
  });
  m.def("struct", [](std::vector<std::int64_t> blocklengths, std::vector<std::int64_t> displacements,
                     const std::vector<Holder>& types) {
    std::vector<TypeRef> children(types.begin(), types.end());
    return hold(Type::struct_(std::move(blocklengths), std::move(displacements), std::move(children)));
  });
  m.def("subarray", [](std::vector<std::int64_t> sizes, std::vector<std::int64_t> subsizes,
                       std::vector<std::int64_t> starts, const std::string& order, Holder old) {
    return hold(Type::subarray(std::move(sizes), std::move(subsizes), std::move(starts), order_from_name(order), old));
  });
  m.def("darray", [](std::int64_t size, std::int64_t rank, std::vector<std::int64_t> global_sizes,
                     const std::vector<std::string>& distributions, std::vector<std::int64_t> arguments,
                     std::vector<std::int64_t> process_grid, const std::string& order, Holder old) {
    std::vector<Distribution> kinds;
    for (const auto& name : distributions) kinds.push_back(distribution_from_name(name));
    return hold(Type::darray(size, rank, std::move(global_sizes), std::move(kinds), std::move(arguments),
                             std::move(process_grid), order_from_name(order), old));
  });
  m.def("resized", [](std::int64_t lb, std::int64_t extent, Holder old) { return hold(Type::resized(lb, extent, old)); });
  m.def("dup", [](Holder old) { return hold(Type::dup(old)); });
  m.attr("DEFAULT_DISTRIBUTION_ARGUMENT") = datatype::kDefaultDistributionArgument;

  m.def(
      "pack",
      [](const Type& type, py::handle source, std::int64_t count, py::handle out, std::int64_t origin_offset,
         std::int64_t first, std::int64_t max_bytes) {
        const Objects objects = checked_objects(type, count);
        const std::int64_t wanted = bytes_wanted(objects, first, max_bytes);
        const ContiguousBytes data(source, false, "buf");
        const ContiguousBytes packed(out, true, "out");
        const std::byte* origin = checked_origin(data, type, objects, origin_offset, "buf");
        PYCOMM_ENFORCE(packed.bytes() >= wanted, "out is too small: ", wanted, " packed bytes do not fit in ",
                       packed.bytes());
        // One thread: splitting even a 4 MiB copy over this machine's cores measured slower.
        py::gil_scoped_release release;
        return datatype::pack(objects, origin, packed.data(), first, wanted);
      },
      py::arg("type"), py::arg("source"), py::arg("count"), py::arg("out"), py::arg("origin_offset") = 0,
      py::arg("first") = 0, py::arg("max_bytes") = -1);

  m.def(
      "unpack",
      [](const Type& type, py::handle packed, py::handle target, std::int64_t count, std::int64_t origin_offset,
         std::int64_t first, std::int64_t max_bytes) {
        const Objects objects = checked_objects(type, count);
        const std::int64_t wanted = bytes_wanted(objects, first, max_bytes);
        const ContiguousBytes in(packed, false, "packed");
        const ContiguousBytes data(target, true, "buf");
        std::byte* origin = checked_origin(data, type, objects, origin_offset, "buf");
        PYCOMM_ENFORCE(in.bytes() >= wanted, "packed holds ", in.bytes(), " bytes but ", wanted, " are needed");
        py::gil_scoped_release release;
        return datatype::unpack(objects, in.data(), origin, first, wanted);
      },
      py::arg("type"), py::arg("packed"), py::arg("target"), py::arg("count"), py::arg("origin_offset") = 0,
      py::arg("first") = 0, py::arg("max_bytes") = -1);
}

}  // namespace pycomm::bindings
