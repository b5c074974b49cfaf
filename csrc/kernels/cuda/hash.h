// pycomm's content hash (kernels/hash.h) of device memory: one GPU thread per 4 KiB leaf running
// the same leaf function as the CPU, then the leaf digests are folded on the host.
#pragma once

#include <cstddef>
#include <cstdint>

namespace pycomm::kernels::cuda {

// `data` is a device pointer (or managed memory). Synchronous on the default stream.
std::uint64_t hash64_device(const void* data, std::size_t length, std::uint64_t seed);

}  // namespace pycomm::kernels::cuda
