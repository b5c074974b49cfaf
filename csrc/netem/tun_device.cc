#include "netem/tun_device.h"

#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <utility>

#include "common/error.h"

namespace pycomm::netem {
namespace {

// A descriptor closed on every path, for the namespace handles used while creating the device.
class ScopedFd {
 public:
  explicit ScopedFd(int fd) : fd_(fd) {}
  ~ScopedFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

int open_or_throw(const std::string& path, int flags) {
  const int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) PYCOMM_THROW(IoError, "cannot open ", path, ": ", std::strerror(errno));
  return fd;
}

void enter_namespace(int fd, const std::string& what) {
  if (setns(fd, CLONE_NEWNET) != 0) {
    PYCOMM_THROW(IoError, "cannot enter the network namespace ", what, ": ", std::strerror(errno));
  }
}

}  // namespace

TunDevice::TunDevice(const std::string& namespace_path, const std::string& name, bool offload) {
  PYCOMM_ENFORCE(!name.empty() && name.size() < IFNAMSIZ, "TUN device name '", name, "' must have 1 to ",
                 IFNAMSIZ - 1, " characters");
  ScopedFd home(open_or_throw("/proc/self/ns/net", O_RDONLY));
  ScopedFd target(open_or_throw(namespace_path, O_RDONLY));
  enter_namespace(target.get(), namespace_path);
  // The device is created in the namespace of the thread that issues TUNSETIFF; go home even if
  // that fails, so an error never leaves the relay inside a peer's namespace.
  int error = 0;
  ScopedFd tun(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
  if (tun.get() < 0) {
    error = errno;
  } else {
    ifreq request{};
    request.ifr_flags = IFF_TUN | IFF_NO_PI | (offload ? IFF_VNET_HDR : 0);
    std::memcpy(request.ifr_name, name.c_str(), name.size());
    if (ioctl(tun.get(), TUNSETIFF, &request) != 0) {
      error = errno;
    } else if (offload && ioctl(tun.get(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4) != 0) {
      error = errno;
    }
  }
  enter_namespace(home.get(), "of the relay");
  if (tun.get() < 0) {
    PYCOMM_THROW(IoError, "cannot open /dev/net/tun in ", namespace_path, ": ", std::strerror(error));
  }
  if (error != 0) {
    PYCOMM_THROW(IoError, "cannot create TUN device ", name, " in ", namespace_path, ": ", std::strerror(error));
  }
  fd_ = tun.release();
}

TunDevice::~TunDevice() {
  if (fd_ >= 0) ::close(fd_);
}

TunDevice::TunDevice(TunDevice&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}

TunDevice& TunDevice::operator=(TunDevice&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = std::exchange(other.fd_, -1);
  }
  return *this;
}

}  // namespace pycomm::netem
