#include "kernels/cuda/device.h"

#include <cuda_runtime.h>


namespace pycomm::kernels::cuda {

RuntimeStatus runtime_status() {
  RuntimeStatus status;
  cudaRuntimeGetVersion(&status.runtime_version);
  if (cudaDriverGetVersion(&status.driver_version) != cudaSuccess) status.driver_version = 0;
  const cudaError_t error = cudaGetDeviceCount(&status.devices);
  if (error != cudaSuccess) {
    status.devices = 0;
    status.reason = status.driver_version == 0 ? std::string("no CUDA driver is installed on this machine")
                                               : std::string(cudaGetErrorString(error));
    cudaGetLastError();  // clear the sticky error so a later query starts clean
    return status;
  }
  if (status.devices == 0) {
    status.reason = "the CUDA runtime found no device";
    return status;
  }
  cudaDeviceProp properties;
  if (cudaGetDeviceProperties(&properties, 0) == cudaSuccess) status.first_device = properties.name;
  return status;
}

}  // namespace pycomm::kernels::cuda
