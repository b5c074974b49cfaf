// A TCP socket owned by exactly one object (closed in its destructor), with deadline-bound I/O.
//
// The only code in pycomm that makes system calls on sockets. Sockets are non-blocking; each
// operation waits with poll() until its deadline, so no call can hang on a silent peer. Failures
// throw IoError (the peer went away or the network failed) or Timeout (the deadline passed); a
// socket that failed mid-message must be discarded, since the stream position is then unknown.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/deadline.h"

namespace pycomm::transport {

struct SocketOptions {
  // TCP_USER_TIMEOUT: how long sent data may stay unacknowledged before the kernel declares the
  // connection dead (detects a vanished host in seconds instead of TCP's default of minutes).
  int user_timeout_ms = 10'000;
  bool no_delay = true;
};

class Socket {
 public:
  Socket() = default;
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket();
  Socket(Socket&& other) noexcept;
  Socket& operator=(Socket&& other) noexcept;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  // A listening socket on host:port (port 0: an ephemeral port; see local_port()).
  static Socket listen(const std::string& host, std::uint16_t port, int backlog = 128);
  static Socket connect(const std::string& host, std::uint16_t port, Deadline deadline,
                        const SocketOptions& options = {});
  Socket accept(Deadline deadline, const SocketOptions& options = {}) const;

  void send_all(const void* data, std::size_t bytes, Deadline deadline) const;
  // Reads exactly `bytes`; IoError if the peer closes first (saying how many bytes had arrived).
  void receive_exact(void* data, std::size_t bytes, Deadline deadline) const;

  std::uint16_t local_port() const;
  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  void close();

 private:
  void apply(const SocketOptions& options) const;
  void wait_until_ready(short events, Deadline deadline, const char* what) const;

  int fd_ = -1;
};

}  // namespace pycomm::transport
