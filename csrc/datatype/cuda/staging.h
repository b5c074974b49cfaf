// The host side of the GPU send methods (pycomm/datatype/send_model.py): pinned host memory that
// kernels can write into directly ("one-shot": the pack kernel's stores cross the bus, no copy
// follows) or that a device-to-host copy fills ("staged"), plus the copy and stream calls around it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pycomm::datatype::cuda {

// Page-locked host memory, mapped into the address space of every device (cudaHostAllocMapped |
// cudaHostAllocPortable). Owned: freed when the object goes.
class PinnedHostBuffer {
 public:
  explicit PinnedHostBuffer(std::size_t bytes);
  ~PinnedHostBuffer();
  PinnedHostBuffer(const PinnedHostBuffer&) = delete;
  PinnedHostBuffer& operator=(const PinnedHostBuffer&) = delete;

  void* host_pointer() const { return host_; }
  // The address kernels use (equal to host_pointer() wherever the GPU shares the host's addresses).
  void* device_pointer() const { return device_; }
  std::size_t size() const { return bytes_; }

 private:
  void* host_ = nullptr;
  void* device_ = nullptr;
  std::size_t bytes_ = 0;
};

// Enqueues a copy of `bytes` bytes on `stream` (__cuda_array_interface__ encoding); the direction is
// found from the pointers.
void copy_async(void* destination, const void* source, std::size_t bytes, std::uintptr_t stream);

// Waits for everything enqueued on `stream`; raises the error of any kernel that failed on it.
void synchronize_stream(std::uintptr_t stream);

}  // namespace pycomm::datatype::cuda
