// Scratch memory of ring operations, recycled through a process-wide pool.
//
// Why: an operation needs one or two buffers as large as its data. Fresh large allocations come
// from mmap and go back with munmap, so each operation would pay a page fault per 4 KiB and the
// kernel's zeroing (measured: a third of a 16 MiB all-reduce's time on loopback). The pool keeps
// released blocks (up to kMaxPooledBytes in all) for the next operation of a similar size. The
// memory is not initialised: every operation writes each byte before it reads it.
#pragma once

#include <cstddef>

namespace pycomm::ft {

class Scratch {
 public:
  Scratch() = default;
  explicit Scratch(std::size_t bytes);
  ~Scratch();
  Scratch(Scratch&& other) noexcept;
  Scratch& operator=(Scratch&& other) noexcept;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  unsigned char* data() const { return data_; }
  std::size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

 private:
  void release();

  unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
  std::size_t capacity_ = 0;
};

inline constexpr std::size_t kMaxPooledBytes = std::size_t{512} << 20;

}  // namespace pycomm::ft
