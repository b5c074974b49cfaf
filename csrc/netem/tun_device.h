// A TUN device created inside another network namespace, and the file descriptor that carries its
// packets. The device lives exactly as long as the descriptor: when the relay exits, for whatever
// reason, every device it made disappears with it.
#pragma once

#include <string>

namespace pycomm::netem {

class TunDevice {
 public:
  // Enters the namespace bound at `namespace_path` (e.g. /run/netns/NAME), creates the device
  // `name` there (IPv4 packets without the packet-information prefix, non-blocking) and returns to
  // the namespace the calling thread was in. With `offload`, every packet comes and goes behind a
  // virtio-net header and the device takes TCP/IPv4 super-packets with checksums left undone
  // (offload.h).
  TunDevice(const std::string& namespace_path, const std::string& name, bool offload);
  ~TunDevice();
  TunDevice(TunDevice&& other) noexcept;
  TunDevice& operator=(TunDevice&& other) noexcept;
  TunDevice(const TunDevice&) = delete;
  TunDevice& operator=(const TunDevice&) = delete;

  int fd() const { return fd_; }

 private:
  int fd_ = -1;
};

}  // namespace pycomm::netem
