// The handling decision and packed buffers shared by the wrappers (see transfer.h).
#include "interpose/transfer.h"

#include <cstdio>
#include <exception>
#include <new>

#include "interpose/memory_kind.h"
#include "interpose/real_symbols.h"
#include "interpose/settings.h"

namespace pycomm::interpose {

void PackedTransfer::pack_into(std::byte* out) const {
  datatype::pack(objects(), static_cast<const std::byte*>(buffer), out);
}

void PackedTransfer::unpack_from(const std::byte* in, std::int64_t received) const {
  const std::int64_t usable = received < bytes ? received : bytes;
  if (usable <= 0) {
    return;
  }
  try {
    datatype::unpack(objects(), in, static_cast<std::byte*>(const_cast<void*>(buffer)), 0, usable);
  } catch (const std::exception& error) {
    // The message is consumed: there is no MPI call left to fall back to. Never expected (unpack
    // allocates nothing), but never silent either.
    count_event(Event::fallback);
    std::fprintf(stderr, "pycomm interposer: could not unpack a received message: %s\n", error.what());
  }
}

std::optional<PackedTransfer> plan_transfer(Part part, const void* buffer, std::int64_t count,
                                            MPI_Datatype handle) {
  const Settings& active = settings();
  if (!(part == Part::pack ? active.pack_on() : active.send_on()) || count <= 0 || buffer == MPI_IN_PLACE) {
    return std::nullopt;
  }
  CachedTypeRef type = type_cache().find(handle);
  if (type == nullptr || type->contiguous || count > INT64_MAX / type->size) {
    return std::nullopt;
  }
  PackedTransfer transfer{std::move(type), buffer, count, 0};
  if (!datatype::fits_in_64_bits(transfer.objects())) {
    return std::nullopt;
  }
  transfer.bytes = count * transfer.type->size;
  if (part == Part::message && transfer.bytes < active.min_bytes) {
    return std::nullopt;
  }
  // The first data byte, not the origin: with MPI_BOTTOM the origin is address 0.
  const auto first_byte = reinterpret_cast<std::uintptr_t>(buffer) + datatype::span(transfer.objects()).begin;
  if (is_device_memory(reinterpret_cast<const void*>(first_byte))) {
    return std::nullopt;
  }
  return transfer;
}

PackedBuffer PackedBuffer::owned(std::int64_t bytes) {
  PackedBuffer buffer;
  buffer.owned_.reset(new std::byte[static_cast<size_t>(bytes > 0 ? bytes : 1)]);
  buffer.data_ = buffer.owned_.get();
  return buffer;
}

PackedBuffer PackedBuffer::borrowed(Slot slot, std::int64_t bytes) {
  if (bytes > kReusedBytes) {
    return owned(bytes);
  }
  struct Reused {
    std::unique_ptr<std::byte[]> data;
    std::int64_t capacity = 0;
  };
  thread_local Reused reused[2];
  Reused& mine = reused[static_cast<int>(slot)];
  if (mine.capacity < bytes) {
    mine.data.reset();  // free first: the old and new buffer need not exist together
    mine.capacity = 0;
    mine.data.reset(new std::byte[static_cast<size_t>(bytes)]);
    mine.capacity = bytes;
  }
  PackedBuffer buffer;
  buffer.data_ = mine.data.get();
  return buffer;
}

int error_class(int code) {
  int result = code;
  auto real = PYCOMM_REAL(MPI_Error_class);
  if (real == nullptr || real(code, &result) != MPI_SUCCESS) {
    return code;
  }
  return result;
}

bool data_arrived(int code) { return code == MPI_SUCCESS || error_class(code) == MPI_ERR_TRUNCATE; }

std::int64_t received_bytes(const MPI_Status& status) {
  if (auto large = PYCOMM_REAL(MPI_Get_count_c)) {
    MPI_Count count = 0;
    if (large(&status, MPI_BYTE, &count) == MPI_SUCCESS && count != MPI_UNDEFINED) {
      return count;
    }
    return 0;
  }
  auto classic = PYCOMM_REAL(MPI_Get_count);
  int count = 0;
  if (classic != nullptr && classic(&status, MPI_BYTE, &count) == MPI_SUCCESS && count != MPI_UNDEFINED) {
    return count;
  }
  return 0;
}

void note_fallback(Function, const char* what) {
  count_event(Event::fallback);
  if (settings().verbose) {
    std::fprintf(stderr, "pycomm interposer: left a call to MPI after an internal error: %s\n", what);
  }
}

int missing_real_function(const char* name) {
  std::fprintf(stderr,
               "pycomm interposer: %s is not in any loaded MPI library (is the program an MPI program, "
               "and its MPI built with MPICH's ABI?)\n",
               name);
  return MPI_ERR_INTERN;
}

}  // namespace pycomm::interpose
