// Whether a buffer lives in GPU memory, where the CPU pack path must not touch it.
//
// The interposer packs on the CPU only; a device buffer goes to MPI untouched (a CUDA-aware MPI
// handles it). CUDA's driver library is asked only when the process has already loaded it, so a
// CPU-only program never loads CUDA because of the interposer.
#pragma once

namespace pycomm::interpose {

// True for memory the CPU cannot address directly (CUDA device memory that is not managed).
bool is_device_memory(const void* address);

}  // namespace pycomm::interpose
