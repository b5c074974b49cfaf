// The fast path of pycomm.datatype.pack and unpack: plain CPython calls (no pybind11 dispatch) for
// the common case — a committed type, a C-contiguous numpy array or other buffer, a given output, the
// whole packed stream — where a kilobyte pack would otherwise spend more time in argument handling
// than in copying. Anything else (no output, offset/first/max_bytes, GPU arrays, any check that
// fails) goes to the Python implementation, which raises the clear errors; so nothing here raises.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <optional>
#include <string>

#include "datatype/pack.h"
#include "datatype/type.h"

namespace py = pybind11;

namespace pycomm::bindings {
namespace {

using datatype::Objects;
using datatype::Type;

// Set by pycomm.datatype: the Python implementations the fast path hands everything else to, and
// the attribute a committed, live Type keeps its native address in (None otherwise).
PyObject* pack_fallback = nullptr;
PyObject* unpack_fallback = nullptr;
PyObject* handle_attribute = nullptr;

// Copies of more than this many bytes release the GIL (below it, releasing costs more than it frees).
constexpr std::int64_t kReleaseGilBytes = 64 * 1024;

class HeldBuffer {
 public:
  bool acquire(PyObject* object, bool writable) {
    const int flags = PyBUF_C_CONTIGUOUS | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(object, &view_, flags) != 0) {
      PyErr_Clear();
      return false;
    }
    held_ = true;
    return true;
  }
  ~HeldBuffer() {
    if (held_) PyBuffer_Release(&view_);
  }
  std::byte* data() const { return static_cast<std::byte*>(view_.buf); }
  std::int64_t bytes() const { return static_cast<std::int64_t>(view_.len); }

 private:
  Py_buffer view_{};
  bool held_ = false;
};

// The committed, live native type behind a pycomm.datatype.Type, or null.
const Type* native_type(PyObject* type) {
  PyObject* handle = PyObject_GetAttr(type, handle_attribute);
  if (handle == nullptr) {
    PyErr_Clear();
    return nullptr;
  }
  const Type* native = handle == Py_None ? nullptr : static_cast<const Type*>(PyLong_AsVoidPtr(handle));
  Py_DECREF(handle);
  if (PyErr_Occurred()) {
    PyErr_Clear();
    return nullptr;
  }
  return native;
}

// `count` objects of `type` whose data all lies in `buffer` (the origin at its start), or nothing:
// the checked path then says what is wrong.
std::optional<Objects> objects_inside(const Type& type, std::int64_t count, const HeldBuffer& buffer) {
  const Objects objects{&type.layout(), count, type.extent()};
  if (!datatype::fits_in_64_bits(objects)) return std::nullopt;
  const datatype::Span touched = datatype::span(objects, type.touched());
  if (touched.begin != touched.end && (touched.begin < 0 || touched.end > buffer.bytes())) return std::nullopt;
  return objects;
}

// Runs a copy of `bytes`, without the GIL when it is large.
template <typename Copy>
void run_copy(std::int64_t bytes, Copy copy) {
  if (bytes > kReleaseGilBytes) {
    Py_BEGIN_ALLOW_THREADS copy();
    Py_END_ALLOW_THREADS
  } else {
    copy();
  }
}

bool small_count(PyObject* object, std::int64_t* count) {
  if (!PyLong_CheckExact(object)) return false;
  int overflow = 0;
  *count = PyLong_AsLongLongAndOverflow(object, &overflow);
  return overflow == 0 && *count >= 0;
}

PyObject* fall_back(PyObject* fallback, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  return PyObject_Vectorcall(fallback, args, static_cast<std::size_t>(nargs), kwnames);
}

// pack(buf, t, count=1, out=None, ...): fast when out is given positionally and nothing else is.
PyObject* fast_pack(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  std::int64_t count = 1;
  const bool plain = kwnames == nullptr && nargs == 4 && small_count(args[2], &count) && args[3] != Py_None;
  const Type* type = plain ? native_type(args[1]) : nullptr;
  if (type == nullptr) return fall_back(pack_fallback, args, nargs, kwnames);
  HeldBuffer data;
  HeldBuffer out;
  if (!data.acquire(args[0], false) || !out.acquire(args[3], true)) {
    return fall_back(pack_fallback, args, nargs, kwnames);
  }
  const auto objects = objects_inside(*type, count, data);
  // An output of another size is trimmed, or refused, by the checked path.
  if (!objects.has_value() || out.bytes() != objects->packed_bytes()) {
    return fall_back(pack_fallback, args, nargs, kwnames);
  }
  run_copy(out.bytes(), [&] { datatype::pack(*objects, data.data(), out.data(), 0, out.bytes()); });
  Py_INCREF(args[3]);
  return args[3];
}

// unpack(packed, buf, t, count=1, ...): fast when all four are given positionally.
PyObject* fast_unpack(PyObject*, PyObject* const* args, Py_ssize_t nargs, PyObject* kwnames) {
  std::int64_t count = 1;
  const bool plain = kwnames == nullptr && (nargs == 3 || (nargs == 4 && small_count(args[3], &count)));
  const Type* type = plain ? native_type(args[2]) : nullptr;
  if (type == nullptr) return fall_back(unpack_fallback, args, nargs, kwnames);
  HeldBuffer in;
  HeldBuffer data;
  if (!in.acquire(args[0], false) || !data.acquire(args[1], true)) {
    return fall_back(unpack_fallback, args, nargs, kwnames);
  }
  const auto objects = objects_inside(*type, count, data);
  if (!objects.has_value() || in.bytes() < objects->packed_bytes()) {
    return fall_back(unpack_fallback, args, nargs, kwnames);
  }
  const std::int64_t wanted = objects->packed_bytes();
  run_copy(wanted, [&] { datatype::unpack(*objects, in.data(), data.data(), 0, wanted); });
  return PyLong_FromLongLong(wanted);
}

// Their docstrings come from the Python implementations (see install_fast_path); kept here because
// CPython reads ml_doc whenever __doc__ is asked for.
std::string pack_doc;
std::string unpack_doc;

PyMethodDef fast_methods[] = {
    {"pack", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fast_pack)),
     METH_FASTCALL | METH_KEYWORDS, nullptr},
    {"unpack", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(fast_unpack)),
     METH_FASTCALL | METH_KEYWORDS, nullptr},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

void bind_datatype_fast(py::module_& m) {
  // install_fast_path(pack, unpack, attribute, pack_doc, unpack_doc) -> (fast pack, fast unpack): the
  // fast functions, falling back on the Python implementations given. Called once by pycomm.datatype.
  m.def("install_fast_path", [](py::object pack, py::object unpack, py::str attribute, std::string pack_text,
                                std::string unpack_text) {
    Py_XSETREF(pack_fallback, pack.release().ptr());
    Py_XSETREF(unpack_fallback, unpack.release().ptr());
    Py_XSETREF(handle_attribute, attribute.release().ptr());
    pack_doc = std::move(pack_text);
    unpack_doc = std::move(unpack_text);
    fast_methods[0].ml_doc = pack_doc.c_str();
    fast_methods[1].ml_doc = unpack_doc.c_str();
    PyObject* fast_pack_object = PyCFunction_NewEx(&fast_methods[0], nullptr, nullptr);
    PyObject* fast_unpack_object = PyCFunction_NewEx(&fast_methods[1], nullptr, nullptr);
    if (fast_pack_object == nullptr || fast_unpack_object == nullptr) throw py::error_already_set();
    return py::make_tuple(py::reinterpret_steal<py::object>(fast_pack_object),
                          py::reinterpret_steal<py::object>(fast_unpack_object));
  });
  m.def("address", [](const Type& type) { return reinterpret_cast<std::uintptr_t>(&type); },
        "The address of the native type (valid while the Python object lives)");
}

}  // namespace pycomm::bindings
