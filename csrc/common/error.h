// One exception tree for the whole C++ core. The bindings translate each class to a Python
// exception in exactly one place (csrc/bindings/errors.cc); nothing else in C++ knows Python.
//
// PYCOMM_ENFORCE stamps file:line so a message from deep inside a kernel still says where it came
// from, and builds its message only on the failing path.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace pycomm {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The caller passed something the operation cannot accept (wrong dtype, size, value).
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

// The feature exists in the API but is not available in this build or on this machine.
class NotSupported : public Error {
 public:
  using Error::Error;
};

// A peer vanished or a connection broke; kept apart so callers can retry with a new membership.
class IoError : public Error {
 public:
  using Error::Error;
};

// A peer sent bytes that break the wire protocol (bad magic, version, type or length). The
// connection that carried them is dropped; nothing else is affected.
class ProtocolError : public IoError {
 public:
  using IoError::IoError;
};

// A deadline passed.
class Timeout : public Error {
 public:
  using Error::Error;
};

namespace detail {

template <typename... Parts>
std::string concat(const Parts&... parts) {
  std::ostringstream out;
  (out << ... << parts);
  return out.str();
}

template <typename Exception, typename... Parts>
[[noreturn]] void fail(const char* file, int line, const Parts&... parts) {
  throw Exception(concat(parts..., " [", file, ":", line, "]"));
}

}  // namespace detail
}  // namespace pycomm

#define PYCOMM_THROW(Exception, ...) ::pycomm::detail::fail<Exception>(__FILE__, __LINE__, __VA_ARGS__)

#define PYCOMM_ENFORCE(condition, ...)                      \
  do {                                                      \
    if (!(condition)) {                                     \
      PYCOMM_THROW(::pycomm::InvalidArgument, __VA_ARGS__); \
    }                                                       \
  } while (0)

// PYCOMM_ENFORCE with another exception class (ProtocolError for what a peer sent, ...).
#define PYCOMM_ENFORCE_TYPE(Exception, condition, ...) \
  do {                                                 \
    if (!(condition)) {                                \
      PYCOMM_THROW(Exception, __VA_ARGS__);            \
    }                                                  \
  } while (0)
