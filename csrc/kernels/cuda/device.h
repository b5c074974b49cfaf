// What the CUDA runtime can see on this machine. runtime_status() never throws: when no GPU is
// usable it says why.
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

}  // namespace pycomm::kernels::cuda
