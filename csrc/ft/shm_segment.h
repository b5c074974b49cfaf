// Shared-memory segments of the all-reduce for peers on one machine (see shm_all_reduce.h).
//
// Each peer owns one segment per epoch, a POSIX shared-memory object named after its peer id and
// the epoch: a header with kShmSlots operation slots, then one buffer per slot. The owner creates
// and finally unlinks it; the other peers of the epoch map it by name. A slot says which operation
// (tag, sequence) uses it and how far the owner got, in three counters the others read: rounds
// whose input it published, whose chunk it reduced, whose result it copied out.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

namespace pycomm::ft {

inline constexpr std::uint32_t kShmSlots = 8;
// Two rounds of 256 KiB (shm_all_reduce.h): the rounds stay in cache. On the project's 2-core
// machine, 16 MiB all-reduces of 2 peers took 1.90-1.95 ms with 512 KiB, 2.14-2.19 with 1 MiB and
// 2.04-2.16 with 256 KiB (medians of 40, two runs each).
inline constexpr std::size_t kShmBufferBytes = std::size_t{512} << 10;

struct alignas(64) ShmSlot {
  std::atomic<std::uint64_t> in_use;  // 0: free; 1: holds (tag, sequence)
  std::atomic<std::uint64_t> tag;
  std::atomic<std::uint64_t> sequence;
  std::atomic<std::uint64_t> count;
  std::atomic<std::uint64_t> kind;  // dtype | op << 8, to detect peers that disagree
  alignas(64) std::atomic<std::uint64_t> inputs;    // rounds whose input is in the buffer
  alignas(64) std::atomic<std::uint64_t> reduced;   // rounds whose chunk this owner reduced
  alignas(64) std::atomic<std::uint64_t> consumed;  // rounds whose result this owner copied out
};

struct ShmHeader {
  std::atomic<std::uint64_t> magic;  // written last by the creator: the segment is ready
  std::uint64_t slots;
  std::uint64_t buffer_bytes;
  ShmSlot slot[kShmSlots];
};

static_assert(std::atomic<std::uint64_t>::is_always_lock_free, "shared-memory counters need lock-free atomics");

// One mapping of a segment. create() makes this peer's own; open() maps another peer's, returning
// false while it does not exist yet (or is not ready).
class ShmSegment {
 public:
  ShmSegment() = default;
  ~ShmSegment();
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;

  void create(const std::string& name);
  bool open(const std::string& name);
  bool mapped() const { return header_ != nullptr; }

  ShmHeader& header() const { return *header_; }
  unsigned char* buffer(std::uint32_t slot) const;
  static std::size_t total_bytes();

 private:
  ShmHeader* header_ = nullptr;
  std::string owned_name_;  // unlinked on destruction when this peer created it
};

}  // namespace pycomm::ft
