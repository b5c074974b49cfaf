// pycomm's content hash: a fast, deterministic 64-bit digest of a byte string, the same on every
// machine, run, thread count and (later) on the GPU. Used to compare shared state across peers.
//
// The string is cut into leaves of kHashLeafBytes; each leaf is digested on its own (so leaves can
// be hashed in parallel) and the digests are folded in order with the total length. Not a
// cryptographic hash: it detects divergence, it does not resist an adversary.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pycomm::kernels {

inline constexpr std::size_t kHashLeafBytes = 4096;
inline constexpr int kHashVersion = 1;

// The odd constants of the mixing rounds (the xxHash64 primes, chosen for good bit dispersion).
inline constexpr std::uint64_t kHashPrime1 = 0x9e3779b185ebca87ull;
inline constexpr std::uint64_t kHashPrime2 = 0xc2b2ae3d27d4eb4full;
inline constexpr std::uint64_t kHashPrime3 = 0x165667b19e3779f9ull;
inline constexpr std::uint64_t kHashPrime4 = 0x85ebca77c2b2ae63ull;
inline constexpr std::uint64_t kHashPrime5 = 0x27d4eb2f165667c5ull;

std::uint64_t hash64(const void* data, std::size_t length, std::uint64_t seed = 0);

// The fold of leaf digests into the final value; exposed so other hashers (GPU) can finish a hash.
std::uint64_t hash_combine_leaves(const std::uint64_t* leaf_digests, std::size_t leaf_count, std::size_t length,
                                  std::uint64_t seed);

}  // namespace pycomm::kernels
