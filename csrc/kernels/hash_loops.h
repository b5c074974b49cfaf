// The leaf function of pycomm's content hash, compiled once per instruction set.
//
// A leaf is up to kHashLeafBytes bytes read as little-endian 64-bit words in 8 independent lanes
// (64-byte stripes; the last stripe zero-padded). Each lane is a multiply-rotate chain, so the
// leaf digest depends on every byte and its position; the lane digests are folded and avalanched
// together with the leaf's length and index. hash.cc combines the leaf digests in order. The leaf
// structure is what lets a GPU (one thread per leaf) and several CPU threads compute the same value.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/hash.h"

#ifndef PYCOMM_KERNEL_ISA
#error "hash_loops.h is included only by a file that defines PYCOMM_KERNEL_ISA (isa_*.cc, cuda/hash.cu)"
#endif

// The GPU build compiles the very same leaf function, so both compute the same digest.
#ifdef __CUDACC__
#define PYCOMM_HOST_DEVICE __host__ __device__
#else
#define PYCOMM_HOST_DEVICE
#endif

namespace pycomm::kernels::PYCOMM_KERNEL_ISA {

// On the GPU a word-aligned address is read with one 8-byte load (memcpy of unknown alignment would
// become eight byte loads); leaves start 4 KiB apart, so either all of a leaf's words are aligned
// or none is.
PYCOMM_HOST_DEVICE inline std::uint64_t load_little_endian(const unsigned char* p) {
  std::uint64_t word;
#ifdef __CUDA_ARCH__
  if ((reinterpret_cast<std::uintptr_t>(p) & 7u) == 0) return *reinterpret_cast<const std::uint64_t*>(p);
#endif
  std::memcpy(&word, p, sizeof word);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
  word = __builtin_bswap64(word);
#endif
  return word;
}

// With AVX2 but no AVX-512 the vectoriser emulates the 64-bit multiplies lane by lane, which runs at
// half the speed of the plain scalar code (measured: 15.6 against 26 GB/s); AVX-512 has them.
#if defined(__AVX2__) && !defined(__AVX512DQ__) && !defined(__CUDACC__)
__attribute__((optimize("no-tree-vectorize")))
#endif
PYCOMM_HOST_DEVICE inline std::uint64_t hash_leaf(const unsigned char* bytes, std::size_t length, std::uint64_t leaf_index,
                               std::uint64_t seed) {
  constexpr int kLanes = 8;
  constexpr std::size_t kStripe = kLanes * 8;
  const std::uint64_t start = seed ^ (leaf_index * kHashPrime3);
  std::uint64_t lanes[kLanes];
  for (int j = 0; j < kLanes; ++j) lanes[j] = start + static_cast<std::uint64_t>(j + 1) * kHashPrime5;

  std::size_t offset = 0;
  for (; offset + kStripe <= length; offset += kStripe) {
    for (int j = 0; j < kLanes; ++j) lanes[j] = hash_mix_round(lanes[j], load_little_endian(bytes + offset + 8 * j));
  }
  if (offset < length) {
    unsigned char tail[kStripe] = {};
    std::memcpy(tail, bytes + offset, length - offset);
    for (int j = 0; j < kLanes; ++j) lanes[j] = hash_mix_round(lanes[j], load_little_endian(tail + 8 * j));
  }

  std::uint64_t digest = static_cast<std::uint64_t>(length) * kHashPrime5 + start;
  for (int j = 0; j < kLanes; ++j) digest = (digest ^ hash_mix_round(0, lanes[j])) * kHashPrime1 + kHashPrime4;
  return hash_avalanche(digest);
}

}  // namespace pycomm::kernels::PYCOMM_KERNEL_ISA
