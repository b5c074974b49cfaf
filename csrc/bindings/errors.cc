#include "bindings/errors.h"

#include "common/error.h"

namespace py = pybind11;

namespace pycomm::bindings {
namespace {

void raise(const char* class_name, const std::exception& error) {
  // Looked up at raise time: pycomm.errors is plain Python and is always importable once _core is.
  py::object cls = py::module_::import("pycomm.errors").attr(class_name);
  PyErr_SetString(cls.ptr(), error.what());
}

}  // namespace

void register_error_translator() {
  py::register_exception_translator([](std::exception_ptr pointer) {
    if (!pointer) return;
    try {
      std::rethrow_exception(pointer);
    } catch (const InvalidArgument& error) {
      raise("InvalidArgumentError", error);
    } catch (const NotSupported& error) {
      raise("NotSupportedError", error);
    } catch (const Timeout& error) {
      raise("CommTimeout", error);
    } catch (const ProtocolError& error) {
      raise("ProtocolError", error);
    } catch (const IoError& error) {
      raise("CommError", error);
    } catch (const Error& error) {
      raise("PycommError", error);
    }
  });
}

}  // namespace pycomm::bindings
