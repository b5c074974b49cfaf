#include "kernels/cuda/hash.h"

#include <cuda_runtime.h>

#include <vector>

#include "common/error.h"
#include "kernels/hash.h"

#define PYCOMM_KERNEL_ISA cuda_device
#include "kernels/hash_loops.h"

namespace pycomm::kernels::cuda {
namespace {

__global__ void hash_leaves(const unsigned char* data, std::size_t length, std::size_t leaf_count,
                            std::uint64_t seed, std::uint64_t* digests) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  for (std::size_t leaf = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x; leaf < leaf_count;
       leaf += stride) {
    const std::size_t offset = leaf * kHashLeafBytes;
    const std::size_t n = length - offset < kHashLeafBytes ? length - offset : kHashLeafBytes;
    digests[leaf] = cuda_device::hash_leaf(data + offset, n, leaf, seed);
  }
}

void check(cudaError_t error, const char* what) {
  if (error == cudaErrorNoDevice || error == cudaErrorInsufficientDriver) {
    cudaGetLastError();
    PYCOMM_THROW(NotSupported, what, ": no usable CUDA device (", cudaGetErrorString(error), ")");
  }
  if (error != cudaSuccess) PYCOMM_THROW(Error, what, ": ", cudaGetErrorString(error));
}

// Makes `device` current for the life of one call and puts the caller's device back.
class ScopedDevice {
 public:
  explicit ScopedDevice(int device) {
    check(cudaGetDevice(&previous_), "cudaGetDevice");
    if (device != previous_) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~ScopedDevice() { cudaSetDevice(previous_); }
  ScopedDevice(const ScopedDevice&) = delete;
  ScopedDevice& operator=(const ScopedDevice&) = delete;

 private:
  int previous_ = 0;
};

// Owns a device allocation for the life of one call.
class DeviceBuffer {
 public:
  explicit DeviceBuffer(std::size_t bytes) { check(cudaMalloc(&pointer_, bytes == 0 ? 1 : bytes), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(pointer_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return pointer_; }

 private:
  void* pointer_ = nullptr;
};

cudaStream_t stream_from_interface(std::uintptr_t stream) {
  if (stream == 0 || stream == 1) return cudaStreamLegacy;
  if (stream == 2) return cudaStreamPerThread;
  return reinterpret_cast<cudaStream_t>(stream);
}

}  // namespace

std::uint64_t hash64_device(const void* data, std::size_t length, std::uint64_t seed, std::uintptr_t stream) {
  const std::size_t leaf_count = (length + kHashLeafBytes - 1) / kHashLeafBytes;
  std::vector<std::uint64_t> digests(leaf_count);
  if (leaf_count > 0) {
    cudaPointerAttributes attributes;
    check(cudaPointerGetAttributes(&attributes, data), "hash64: looking up the pointer");
    PYCOMM_ENFORCE(attributes.type == cudaMemoryTypeDevice || attributes.type == cudaMemoryTypeManaged,
                   "hash64: the pointer is not device or managed memory");
    ScopedDevice on_device(attributes.device);
    const cudaStream_t queue = stream_from_interface(stream);
    DeviceBuffer device_digests(leaf_count * sizeof(std::uint64_t));
    constexpr int kThreads = 128;
    const std::size_t wanted_blocks = (leaf_count + kThreads - 1) / kThreads;
    const int blocks = static_cast<int>(wanted_blocks < 65535 ? wanted_blocks : 65535);
    hash_leaves<<<blocks, kThreads, 0, queue>>>(static_cast<const unsigned char*>(data), length, leaf_count, seed,
                                               static_cast<std::uint64_t*>(device_digests.get()));
    check(cudaGetLastError(), "hash kernel launch");
    check(cudaMemcpyAsync(digests.data(), device_digests.get(), leaf_count * sizeof(std::uint64_t),
                          cudaMemcpyDeviceToHost, queue),
          "copying leaf digests");
    check(cudaStreamSynchronize(queue), "waiting for the hash kernel");
  }
  return hash_combine_leaves(digests.data(), leaf_count, length, seed);
}

}  // namespace pycomm::kernels::cuda
