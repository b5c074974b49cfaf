#include "transport/tcp/connection.h"

#include <utility>

#include "common/error.h"

namespace pycomm::transport {

Connection::Connection(Socket socket, std::uint64_t max_payload)
    : socket_(std::move(socket)), max_payload_(max_payload) {
  PYCOMM_ENFORCE(socket_.valid(), "a connection needs an open socket");
}

void Connection::close() {
  if (drop_reason_.empty()) drop_reason_ = "closed by this side";
  socket_.close();
}

void Connection::check_open() const {
  if (!socket_.valid()) PYCOMM_THROW(IoError, "connection was dropped: ", drop_reason_);
}

template <typename Io>
void Connection::guarded(Io&& io) {
  check_open();
  try {
    io();
  } catch (const std::exception& error) {
    drop_reason_ = error.what();
    socket_.close();
    throw;
  }
}

void Connection::send_frame(std::uint16_t type, const void* payload, std::size_t bytes, Deadline deadline) {
  FrameHeader header;
  header.type = type;
  header.length = bytes;
  const EncodedHeader encoded = encode_header(header);  // bad arguments throw before any byte is sent
  guarded([&] {
    socket_.send_all(encoded.data(), encoded.size(), deadline);
    socket_.send_all(payload, bytes, deadline);
  });
}

Frame Connection::receive_frame(Deadline deadline) {
  Frame frame;
  guarded([&] {
    EncodedHeader encoded;
    socket_.receive_exact(encoded.data(), encoded.size(), deadline);
    frame.header = decode_header(encoded.data(), max_payload_);  // validated before allocating
    frame.payload.resize(frame.header.length);
    socket_.receive_exact(frame.payload.data(), frame.payload.size(), deadline);
  });
  return frame;
}

}  // namespace pycomm::transport
