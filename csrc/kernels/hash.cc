#include "kernels/hash.h"

#include <algorithm>
#include <vector>

#include "kernels/kernel_table.h"
#include "kernels/parallel.h"

namespace pycomm::kernels {
namespace {

class LeafFolder {
 public:
  LeafFolder(std::size_t length, std::uint64_t seed) : state_(seed + kHashPrime5 + static_cast<std::uint64_t>(length)) {}

  void add(std::uint64_t leaf_digest) {
    state_ = hash_rotate_left(state_ ^ hash_mix_round(0, leaf_digest), 27) * kHashPrime1 + kHashPrime4;
  }

  std::uint64_t finish() const { return hash_avalanche(state_); }

 private:
  std::uint64_t state_;
};

}  // namespace

std::uint64_t hash64(const void* data, std::size_t length, std::uint64_t seed) {
  const auto* bytes = static_cast<const unsigned char*>(data);
  const KernelTable& table = kernel_table();
  const std::size_t leaf_count = (length + kHashLeafBytes - 1) / kHashLeafBytes;
  auto leaf_digest = [&](std::size_t leaf) {
    const std::size_t offset = leaf * kHashLeafBytes;
    return table.hash_leaf(bytes + offset, std::min(kHashLeafBytes, length - offset), leaf, seed);
  };
  if (length < 2 * kMinBytesPerTask) {
    LeafFolder folder(length, seed);
    for (std::size_t leaf = 0; leaf < leaf_count; ++leaf) folder.add(leaf_digest(leaf));
    return folder.finish();
  }
  // Large inputs: leaves in parallel (8 bytes of digest a 4 KiB leaf), then the in-order fold.
  std::vector<std::uint64_t> digests(leaf_count);
  parallel_ranges(leaf_count, kHashLeafBytes, 1, [&](std::size_t begin, std::size_t end) {
    for (std::size_t leaf = begin; leaf < end; ++leaf) digests[leaf] = leaf_digest(leaf);
  });
  return hash_combine_leaves(digests.data(), leaf_count, length, seed);
}

std::uint64_t hash_combine_leaves(const std::uint64_t* leaf_digests, std::size_t leaf_count, std::size_t length,
                                  std::uint64_t seed) {
  LeafFolder folder(length, seed);
  for (std::size_t i = 0; i < leaf_count; ++i) folder.add(leaf_digests[i]);
  return folder.finish();
}

}  // namespace pycomm::kernels
