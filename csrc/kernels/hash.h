// pycomm's content hash: a fast, deterministic 64-bit digest of a byte string, the same on every
// machine, run, thread count and on the GPU (cuda/hash.h). Used to compare shared state across peers.
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

// The mixing primitives, shared by the leaf function (hash_loops.h, compiled per instruction set and
// for the GPU) and the fold (hash.cc). Always inlined, so no out-of-line copy built for one
// instruction set can be handed by the linker to code built for another.
#ifdef __CUDACC__
#define PYCOMM_HASH_INLINE __host__ __device__ __forceinline__
#else
#define PYCOMM_HASH_INLINE inline __attribute__((always_inline))
#endif

PYCOMM_HASH_INLINE std::uint64_t hash_rotate_left(std::uint64_t x, int bits) {
  return (x << bits) | (x >> (64 - bits));
}

PYCOMM_HASH_INLINE std::uint64_t hash_mix_round(std::uint64_t accumulator, std::uint64_t word) {
  return hash_rotate_left(accumulator + word * kHashPrime2, 31) * kHashPrime1;
}

PYCOMM_HASH_INLINE std::uint64_t hash_avalanche(std::uint64_t h) {
  h ^= h >> 33;
  h *= kHashPrime2;
  h ^= h >> 29;
  h *= kHashPrime3;
  h ^= h >> 32;
  return h;
}

std::uint64_t hash64(const void* data, std::size_t length, std::uint64_t seed = 0);

// The fold of leaf digests into the final value; exposed so other hashers (GPU) can finish a hash.
std::uint64_t hash_combine_leaves(const std::uint64_t* leaf_digests, std::size_t leaf_count, std::size_t length,
                                  std::uint64_t seed);

}  // namespace pycomm::kernels
