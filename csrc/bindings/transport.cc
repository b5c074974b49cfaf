// pycomm._core.transport: frames and framed TCP connections, for the layers above and for tests
// (the fuzz tests of the frame decoder drive decode_frame directly). Every blocking call takes a
// timeout in seconds and releases the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cmath>
#include <memory>
#include <string>

#include "common/deadline.h"
#include "common/error.h"
#include "transport/frame.h"
#include "transport/tcp/connection.h"
#include "transport/tcp/socket.h"

namespace py = pybind11;

namespace pycomm::bindings {
namespace {

using transport::Connection;
using transport::Socket;

Deadline checked_deadline(double timeout) {
  PYCOMM_ENFORCE(std::isfinite(timeout) && timeout >= 0 && timeout <= 1e7,
                 "timeout must be a number of seconds in [0, 1e7], got ", timeout);
  return deadline_after(timeout);
}

// Ports and frame types arrive as Python ints; out-of-range values get an error saying so instead of
// pybind's signature mismatch.
std::uint16_t checked_u16(long long value, const char* what) {
  PYCOMM_ENFORCE(value >= 0 && value <= 65535, what, " must be in [0, 65535], got ", value);
  return static_cast<std::uint16_t>(value);
}

py::tuple frame_tuple(const transport::FrameHeader& header, const unsigned char* payload) {
  return py::make_tuple(header.type, header.flags,
                        py::bytes(reinterpret_cast<const char*>(payload), header.length));
}

void bind_connection(py::module_& m) {
  py::class_<Connection>(m, "Connection", "A framed TCP connection (see csrc/transport/tcp/connection.h).")
      .def(
          "send_frame",
          [](Connection& connection, long long type, py::buffer payload, double timeout) {
            const py::buffer_info info = payload.request();
            PYCOMM_ENFORCE(info.ndim <= 1 && (info.ndim == 0 || info.strides[0] == info.itemsize),
                           "payload must be a contiguous buffer");
            const Deadline deadline = checked_deadline(timeout);
            const auto bytes = static_cast<std::size_t>(info.size * info.itemsize);
            const std::uint16_t frame_type = checked_u16(type, "frame type");
            py::gil_scoped_release release;
            connection.send_frame(frame_type, info.ptr, bytes, deadline);
          },
          py::arg("type"), py::arg("payload"), py::arg("timeout"))
      .def(
          "recv_frame",
          [](Connection& connection, double timeout) {
            const Deadline deadline = checked_deadline(timeout);
            transport::Frame frame;
            {
              py::gil_scoped_release release;
              frame = connection.receive_frame(deadline);
            }
            return frame_tuple(frame.header, frame.payload.data());
          },
          py::arg("timeout"))
      .def_property_readonly("open", &Connection::open)
      .def_property_readonly("drop_reason", &Connection::drop_reason)
      .def_property_readonly("max_payload", &Connection::max_payload)
      .def("fileno", &Connection::fd)
      .def("close", &Connection::close);
}

}  // namespace

void bind_transport(py::module_& m) {
  m.attr("PROTOCOL_VERSION") = transport::kProtocolVersion;
  m.attr("HEADER_BYTES") = transport::kFrameHeaderBytes;
  m.attr("DEFAULT_MAX_PAYLOAD") = transport::kDefaultMaxPayload;

  m.def(
      "encode_frame",
      [](long long type, const py::bytes& payload) {
        const std::string body = payload;
        transport::FrameHeader header;
        header.type = checked_u16(type, "frame type");
        header.length = body.size();
        const transport::EncodedHeader encoded = transport::encode_header(header);
        return py::bytes(std::string(encoded.begin(), encoded.end()) + body);
      },
      py::arg("type"), py::arg("payload"));

  m.def(
      "decode_frame",
      [](const py::bytes& data, std::uint64_t max_payload) {
        const std::string bytes = data;
        const auto view = transport::decode_frame(reinterpret_cast<const unsigned char*>(bytes.data()),
                                                  bytes.size(), max_payload);
        return frame_tuple(view.header, view.payload);
      },
      py::arg("data"), py::arg("max_payload") = transport::kDefaultMaxPayload);

  m.def(
      "decode_header",
      [](const py::bytes& data, std::uint64_t max_payload) {
        const std::string bytes = data;
        PYCOMM_ENFORCE(bytes.size() == transport::kFrameHeaderBytes, "a frame header is ",
                       transport::kFrameHeaderBytes, " bytes, got ", bytes.size());
        const transport::FrameHeader header =
            transport::decode_header(reinterpret_cast<const unsigned char*>(bytes.data()), max_payload);
        return py::make_tuple(header.type, header.flags, header.length);
      },
      py::arg("data"), py::arg("max_payload") = transport::kDefaultMaxPayload);

  bind_connection(m);

  py::class_<Socket>(m, "Listener", "A listening TCP socket handing out framed connections.")
      .def(py::init([](const std::string& host, long long port) { return Socket::listen(host, checked_u16(port, "port")); }),
           py::arg("host") = "127.0.0.1", py::arg("port") = 0)
      .def_property_readonly("port", &Socket::local_port)
      .def(
          "accept",
          [](const Socket& listener, double timeout, std::uint64_t max_payload, int user_timeout_ms) {
            const Deadline deadline = checked_deadline(timeout);
            transport::SocketOptions options;
            options.user_timeout_ms = user_timeout_ms;
            py::gil_scoped_release release;
            return std::make_unique<Connection>(listener.accept(deadline, options), max_payload);
          },
          py::arg("timeout"), py::arg("max_payload") = transport::kDefaultMaxPayload,
          py::arg("user_timeout_ms") = transport::SocketOptions{}.user_timeout_ms)
      .def("close", &Socket::close);

  m.def(
      "connect",
      [](const std::string& host, long long port, double timeout, std::uint64_t max_payload, int user_timeout_ms) {
        const std::uint16_t checked_port = checked_u16(port, "port");
        const Deadline deadline = checked_deadline(timeout);
        transport::SocketOptions options;
        options.user_timeout_ms = user_timeout_ms;
        py::gil_scoped_release release;
        return std::make_unique<Connection>(Socket::connect(host, checked_port, deadline, options), max_payload);
      },
      py::arg("host"), py::arg("port"), py::arg("timeout"), py::arg("max_payload") = transport::kDefaultMaxPayload,
      py::arg("user_timeout_ms") = transport::SocketOptions{}.user_timeout_ms);
}

}  // namespace pycomm::bindings
