// pycomm's content hash (kernels/hash.h) of device memory: one GPU thread per 4 KiB leaf running
// the same leaf function as the CPU, then the leaf digests are folded on the host.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pycomm::kernels::cuda {

// `data` is device (or managed) memory of any device; the hash runs on that device. `stream` is
// the stream the data was written on, as __cuda_array_interface__ gives it (0: none given, 1: the
// legacy default stream, 2: the per-thread default stream, else a cudaStream_t): the hash is queued
// behind that work. Returns when the hash is done. Throws NotSupported when no GPU is usable.
std::uint64_t hash64_device(const void* data, std::size_t length, std::uint64_t seed, std::uintptr_t stream);

}  // namespace pycomm::kernels::cuda
