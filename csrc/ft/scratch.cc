#include "ft/scratch.h"

#include <map>
#include <mutex>
#include <new>
#include <utility>

namespace pycomm::ft {
namespace {

constexpr std::size_t kGranule = std::size_t{64} << 10;

// Blocks by capacity. Leaked on purpose at exit (like the kernels' thread pool), so that
// operations destroyed during static destruction never touch a destroyed pool.
struct Pool {
  std::mutex mutex;
  std::multimap<std::size_t, unsigned char*> blocks;
  std::size_t pooled = 0;
};

Pool& pool() {
  static Pool* instance = new Pool;
  return *instance;
}

}  // namespace

Scratch::Scratch(std::size_t bytes) : size_(bytes) {
  if (bytes == 0) return;
  capacity_ = (bytes + kGranule - 1) / kGranule * kGranule;
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    // The smallest pooled block that fits without wasting more than its request.
    auto found = p.blocks.lower_bound(capacity_);
    if (found != p.blocks.end() && found->first <= 2 * capacity_) {
      capacity_ = found->first;
      data_ = found->second;
      p.pooled -= capacity_;
      p.blocks.erase(found);
      return;
    }
  }
  data_ = new unsigned char[capacity_];
}

Scratch::~Scratch() { release(); }

Scratch::Scratch(Scratch&& other) noexcept
    : data_(std::exchange(other.data_, nullptr)),
      size_(std::exchange(other.size_, 0)),
      capacity_(std::exchange(other.capacity_, 0)) {}

Scratch& Scratch::operator=(Scratch&& other) noexcept {
  if (this != &other) {
    release();
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
    capacity_ = std::exchange(other.capacity_, 0);
  }
  return *this;
}

void Scratch::release() {
  if (data_ == nullptr) return;
  unsigned char* block = std::exchange(data_, nullptr);
  {
    Pool& p = pool();
    std::lock_guard<std::mutex> lock(p.mutex);
    if (p.pooled + capacity_ <= kMaxPooledBytes) {
      p.blocks.emplace(capacity_, block);
      p.pooled += capacity_;
      block = nullptr;
    }
  }
  delete[] block;
  size_ = capacity_ = 0;
}

}  // namespace pycomm::ft
