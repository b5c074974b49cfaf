// What the CUDA runtime can see on this machine, and the device-memory helpers the kernels share.
// Nothing here throws when no GPU is present: runtime_status() reports why instead.
#pragma once

#include <string>

namespace pycomm::kernels::cuda {

struct RuntimeStatus {
  int devices = 0;
  int runtime_version = 0;
  int driver_version = 0;  // 0 when no driver is installed
  std::string reason;      // why no device is usable, empty when devices > 0
  std::string first_device;
};

RuntimeStatus runtime_status();

// Throws NotSupported naming the reason when no CUDA device is usable.
void require_device();

}  // namespace pycomm::kernels::cuda
