// CUDA runtime plumbing shared by the datatype kernels: error conversion, the stream encoding of
// __cuda_array_interface__, a scoped current device, and where a pointer lives. Only .cu files of
// this directory include it (it needs cuda_runtime.h).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "common/error.h"

namespace pycomm::datatype::cuda {

// A failed call becomes a pycomm exception carrying the CUDA error string; "no device" is
// NotSupported (the feature exists, this machine cannot run it), anything else Error.
inline void check_cuda(cudaError_t error, const char* what) {
  if (error == cudaSuccess) return;
  cudaGetLastError();  // clear a non-sticky error so the next call starts clean
  if (error == cudaErrorNoDevice || error == cudaErrorInsufficientDriver) {
    PYCOMM_THROW(NotSupported, what, ": no usable CUDA device (", cudaGetErrorString(error), ")");
  }
  PYCOMM_THROW(Error, what, ": ", cudaGetErrorName(error), ": ", cudaGetErrorString(error));
}

// The stream numbers of __cuda_array_interface__ (0: none given, 1: the legacy default stream, 2: the
// per-thread default stream, anything else a cudaStream_t).
inline cudaStream_t stream_from_interface(std::uintptr_t stream) {
  if (stream == 0 || stream == 1) return cudaStreamLegacy;
  if (stream == 2) return cudaStreamPerThread;
  return reinterpret_cast<cudaStream_t>(stream);
}

// Makes `device` current for the life of one call and puts the caller's device back, so a call never
// changes which device the caller's later CUDA calls go to.
class ScopedDevice {
 public:
  explicit ScopedDevice(int device) {
    check_cuda(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) check_cuda(cudaSetDevice(device), "cudaSetDevice");
  }
  ~ScopedDevice() { cudaSetDevice(previous_); }
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;

 private:
  int previous_ = 0;
};

// Where a pointer lives, as the kernels need it: the address a kernel uses and the device that owns
// it (-1 for memory any device can reach: pinned host memory and managed memory).
struct DevicePointer {
  std::uintptr_t address = 0;
  int device = -1;
  bool device_memory = false;  // cudaMalloc'd memory of `device`
};

inline DevicePointer locate_pointer(const void* pointer, const char* role) {
  cudaPointerAttributes attributes;
  check_cuda(cudaPointerGetAttributes(&attributes, pointer), role);
  DevicePointer located;
  switch (attributes.type) {
    case cudaMemoryTypeDevice:
      located.address = reinterpret_cast<std::uintptr_t>(attributes.devicePointer);
      located.device = attributes.device;
      located.device_memory = true;
      return located;
    case cudaMemoryTypeManaged:
      located.address = reinterpret_cast<std::uintptr_t>(pointer);
      return located;
    case cudaMemoryTypeHost:
      // Pinned host memory: a kernel reaches it through its device alias (the same address under
      // unified addressing).
      PYCOMM_ENFORCE(attributes.devicePointer != nullptr, role,
                     " is pinned host memory that is not mapped into the GPU's address space "
                     "(allocate it with cudaHostAllocMapped)");
      located.address = reinterpret_cast<std::uintptr_t>(attributes.devicePointer);
      return located;
    default:
      PYCOMM_THROW(InvalidArgument, role,
                   " is not GPU memory: pass device memory, managed memory or mapped pinned host memory");
  }
}

}  // namespace pycomm::datatype::cuda
