#include "datatype/cuda/staging.h"

#include <cuda_runtime.h>

#include "datatype/cuda/runtime.h"

namespace pycomm::datatype::cuda {

PinnedHostBuffer::PinnedHostBuffer(std::size_t bytes) : bytes_(bytes) {
  // A zero-byte request still gets a real allocation, so the pointers are never null.
  check_cuda(cudaHostAlloc(&host_, bytes == 0 ? 1 : bytes, cudaHostAllocMapped | cudaHostAllocPortable),
             "allocating mapped pinned host memory");
  const cudaError_t error = cudaHostGetDevicePointer(&device_, host_, 0);
  if (error != cudaSuccess) {
    cudaFreeHost(host_);
    check_cuda(error, "mapping pinned host memory into the GPU's address space");
  }
}

PinnedHostBuffer::~PinnedHostBuffer() { cudaFreeHost(host_); }

void copy_async(void* destination, const void* source, std::size_t bytes, std::uintptr_t stream) {
  if (bytes == 0) return;
  check_cuda(cudaMemcpyAsync(destination, source, bytes, cudaMemcpyDefault, stream_from_interface(stream)),
             "cudaMemcpyAsync");
}

void synchronize_stream(std::uintptr_t stream) {
  check_cuda(cudaStreamSynchronize(stream_from_interface(stream)), "waiting for the GPU stream");
}

}  // namespace pycomm::datatype::cuda
