// A framed connection (transport/frame.h) over one TCP socket.
//
// Ownership: a Connection owns its socket. It is not thread-safe: one sender and one receiver at
// most, and not the same frame from two threads. The first error drops the connection (the
// socket is closed: after a failure or a protocol violation the position in the byte stream is
// unknown); every later call then throws IoError naming that first error.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/deadline.h"
#include "transport/frame.h"
#include "transport/tcp/socket.h"

namespace pycomm::transport {

struct Frame {
  FrameHeader header;
  std::vector<unsigned char> payload;
};

class Connection {
 public:
  explicit Connection(Socket socket, std::uint64_t max_payload = kDefaultMaxPayload);

  void send_frame(std::uint16_t type, const void* payload, std::size_t bytes, Deadline deadline);
  Frame receive_frame(Deadline deadline);

  bool open() const { return socket_.valid(); }
  const std::string& drop_reason() const { return drop_reason_; }
  std::uint64_t max_payload() const { return max_payload_; }
  int fd() const { return socket_.fd(); }
  void close();

 private:
  void check_open() const;
  // Runs `io`; on any failure closes the connection, records why, and rethrows.
  template <typename Io>
  void guarded(Io&& io);

  Socket socket_;
  std::uint64_t max_payload_;
  std::string drop_reason_;
};

}  // namespace pycomm::transport
