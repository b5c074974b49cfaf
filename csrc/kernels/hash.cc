#include "kernels/hash.h"

#include <vector>

#include "kernels/kernel_table.h"

namespace pycomm::kernels {
namespace {

std::uint64_t rotate_left(std::uint64_t x, int bits) { return (x << bits) | (x >> (64 - bits)); }

class LeafFolder {
 public:
  LeafFolder(std::size_t length, std::uint64_t seed) : state_(seed + kHashPrime5 + static_cast<std::uint64_t>(length)) {}

  void add(std::uint64_t leaf_digest) {
    state_ = rotate_left(state_ ^ (rotate_left(leaf_digest * kHashPrime2, 31) * kHashPrime1), 27) * kHashPrime1 + kHashPrime4;
  }

  std::uint64_t finish() const {
    std::uint64_t h = state_;
    h ^= h >> 33;
    h *= kHashPrime2;
    h ^= h >> 29;
    h *= kHashPrime3;
    h ^= h >> 32;
    return h;
  }

 private:
  std::uint64_t state_;
};

}  // namespace

std::uint64_t hash64(const void* data, std::size_t length, std::uint64_t seed) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  const KernelTable& table = kernel_table();
  LeafFolder folder(length, seed);
  for (std::size_t offset = 0, leaf = 0; offset < length; offset += kHashLeafBytes, ++leaf) {
    const std::size_t n = length - offset < kHashLeafBytes ? length - offset : kHashLeafBytes;
    folder.add(table.hash_leaf(bytes + offset, n, leaf, seed));
  }
  return folder.finish();
}

std::uint64_t hash_combine_leaves(const std::uint64_t* leaf_digests, std::size_t leaf_count, std::size_t length,
                                  std::uint64_t seed) {
  LeafFolder folder(length, seed);
  for (std::size_t i = 0; i < leaf_count; ++i) folder.add(leaf_digests[i]);
  return folder.finish();
}

}  // namespace pycomm::kernels
