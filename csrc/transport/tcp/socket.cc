#include "transport/tcp/socket.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <utility>

#include "common/error.h"

namespace pycomm::transport {
namespace {

std::string system_error(int error) { return std::strerror(error); }

void set_non_blocking(int fd) {
  const int flags = fcntl(fd, F_GETFL, 0);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    PYCOMM_THROW(IoError, "fcntl(O_NONBLOCK): ", system_error(errno));
  }
}

// Resolves host:port (IPv4 or IPv6, numeric or by name) into an owned addrinfo list.
std::unique_ptr<addrinfo, void (*)(addrinfo*)> resolve(const std::string& host, std::uint16_t port, bool passive) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = passive ? AI_PASSIVE : 0;
  addrinfo* found = nullptr;
  const std::string service = std::to_string(port);
  const int status = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &found);
  if (status != 0) PYCOMM_THROW(IoError, "cannot resolve '", host, "': ", gai_strerror(status));
  return {found, freeaddrinfo};
}

}  // namespace

Socket::~Socket() { close(); }

Socket::Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

Socket& Socket::operator=(Socket&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

void Socket::close() {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
}

Socket Socket::listen(const std::string& host, std::uint16_t port, int backlog) {
  auto addresses = resolve(host, port, true);
  int last_error = 0;
  for (addrinfo* address = addresses.get(); address != nullptr; address = address->ai_next) {
    Socket socket(::socket(address->ai_family, address->ai_socktype | SOCK_CLOEXEC, address->ai_protocol));
    if (!socket.valid()) {
      last_error = errno;
      continue;
    }
    const int on = 1;
    setsockopt(socket.fd_, SOL_SOCKET, SO_REUSEADDR, &on, sizeof on);
    if (::bind(socket.fd_, address->ai_addr, address->ai_addrlen) == 0 && ::listen(socket.fd_, backlog) == 0) {
      set_non_blocking(socket.fd_);
      return socket;
    }
    last_error = errno;
  }
  PYCOMM_THROW(IoError, "cannot listen on ", host, ":", port, ": ", system_error(last_error));
}

Socket Socket::connect(const std::string& host, std::uint16_t port, Deadline deadline, const SocketOptions& options) {
  auto addresses = resolve(host, port, false);
  std::string last_error = "no address";
  for (addrinfo* address = addresses.get(); address != nullptr; address = address->ai_next) {
    Socket socket(::socket(address->ai_family, address->ai_socktype | SOCK_CLOEXEC, address->ai_protocol));
    if (!socket.valid()) {
      last_error = system_error(errno);
      continue;
    }
    set_non_blocking(socket.fd_);
    if (::connect(socket.fd_, address->ai_addr, address->ai_addrlen) != 0) {
      if (errno != EINPROGRESS) {
        last_error = system_error(errno);
        continue;
      }
      socket.wait_until_ready(POLLOUT, deadline, "connect");
      int error = 0;
      socklen_t length = sizeof error;
      getsockopt(socket.fd_, SOL_SOCKET, SO_ERROR, &error, &length);
      if (error != 0) {
        last_error = system_error(error);
        continue;
      }
    }
    socket.apply(options);
    return socket;
  }
  PYCOMM_THROW(IoError, "cannot connect to ", host, ":", port, ": ", last_error);
}

Socket Socket::accept(Deadline deadline, const SocketOptions& options) const {
  for (;;) {
    Socket peer(::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (peer.valid()) {
      peer.apply(options);
      return peer;
    }
    if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR && errno != ECONNABORTED) {
      PYCOMM_THROW(IoError, "accept: ", system_error(errno));
    }
    wait_until_ready(POLLIN, deadline, "accept");
  }
}

void Socket::apply(const SocketOptions& options) const {
  const int no_delay = options.no_delay ? 1 : 0;
  setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &no_delay, sizeof no_delay);
#ifdef TCP_USER_TIMEOUT
  const unsigned user_timeout = static_cast<unsigned>(options.user_timeout_ms);
  setsockopt(fd_, IPPROTO_TCP, TCP_USER_TIMEOUT, &user_timeout, sizeof user_timeout);
#endif
}

void Socket::wait_until_ready(short events, Deadline deadline, const char* what) const {
  for (;;) {
    pollfd entry{fd_, events, 0};
    const int ready = ::poll(&entry, 1, remaining_milliseconds(deadline));
    if (ready > 0) return;  // readable/writable, or an error the next call will report
    if (ready == 0) PYCOMM_THROW(Timeout, what, ": deadline passed");
    if (errno != EINTR) PYCOMM_THROW(IoError, what, ": poll: ", system_error(errno));
  }
}

void Socket::send_all(const void* data, std::size_t bytes, Deadline deadline) const {
  const auto* cursor = static_cast<const unsigned char*>(data);
  std::size_t sent = 0;
  while (sent < bytes) {
    const ssize_t n = ::send(fd_, cursor + sent, bytes - sent, MSG_NOSIGNAL);
    if (n > 0) {
      sent += static_cast<std::size_t>(n);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      wait_until_ready(POLLOUT, deadline, "send");
    } else if (errno != EINTR) {
      PYCOMM_THROW(IoError, "send failed after ", sent, " of ", bytes, " bytes: ", system_error(errno));
    }
  }
}

void Socket::receive_exact(void* data, std::size_t bytes, Deadline deadline) const {
  auto* cursor = static_cast<unsigned char*>(data);
  std::size_t received = 0;
  while (received < bytes) {
    const ssize_t n = ::recv(fd_, cursor + received, bytes - received, 0);
    if (n > 0) {
      received += static_cast<std::size_t>(n);
    } else if (n == 0) {
      PYCOMM_THROW(IoError, "peer closed the connection after ", received, " of ", bytes, " bytes");
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      wait_until_ready(POLLIN, deadline, "receive");
    } else if (errno != EINTR) {
      PYCOMM_THROW(IoError, "receive failed after ", received, " of ", bytes, " bytes: ", system_error(errno));
    }
  }
}

std::uint16_t Socket::local_port() const {
  sockaddr_storage address{};
  socklen_t length = sizeof address;
  if (getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    PYCOMM_THROW(IoError, "getsockname: ", system_error(errno));
  }
  if (address.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&address)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&address)->sin_port);
}

}  // namespace pycomm::transport
