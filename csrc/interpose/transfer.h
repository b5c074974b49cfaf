// What every wrapper asks before touching data: does pycomm pack this buffer itself, and where do
// the packed bytes go.
//
// A transfer is handled when its part is switched on, the type was decoded at commit and is not
// contiguous, there is data, the buffer is CPU memory and (for messages) the packed size reaches
// PYCOMM_INTERPOSE_MIN_BYTES. Everything else goes to MPI untouched.
#pragma once

#include <climits>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>

#include "datatype/pack.h"
#include "interpose/counters.h"
#include "interpose/mpi_api.h"
#include "interpose/type_cache.h"

namespace pycomm::interpose {

enum class Part { pack, message };

// `count` objects of a cached type at `buffer`, and their packed size.
struct PackedTransfer {
  CachedTypeRef type;
  const void* buffer = nullptr;
  std::int64_t count = 0;
  std::int64_t bytes = 0;  // count * type->size

  datatype::Objects objects() const { return {type->layout, count, type->extent}; }
  void pack_into(std::byte* out) const;
  // Scatters the first `received` packed bytes (clipped to `bytes`) into `buffer`. Never throws.
  void unpack_from(const std::byte* in, std::int64_t received) const;
};

std::optional<PackedTransfer> plan_transfer(Part part, const void* buffer, std::int64_t count,
                                            MPI_Datatype handle);

// Packed bytes for one transfer. Blocking calls borrow a per-thread buffer that is reused from
// call to call (no allocation, no page faults in a loop); past kReusedBytes, or when the bytes
// must outlive the call (Isend/Irecv), the buffer is the transfer's own.
class PackedBuffer {
 public:
  static constexpr std::int64_t kReusedBytes = std::int64_t{64} << 20;
  enum class Slot { send = 0, receive = 1 };

  // A buffer owned by this object (for requests: moved into the request table).
  static PackedBuffer owned(std::int64_t bytes);
  // The calling thread's reusable buffer `slot`, or an owned one when `bytes` is large.
  static PackedBuffer borrowed(Slot slot, std::int64_t bytes);

  std::byte* data() const { return data_; }

 private:
  std::unique_ptr<std::byte[]> owned_;
  std::byte* data_ = nullptr;
};

// The error class of an MPI return code (MPI_Error_class), for telling truncation apart.
int error_class(int code);
// Whether data arrived despite `code`: success, or a truncated message (its first part arrived).
bool data_arrived(int code);
// Bytes a completed receive got (MPI_Get_count with MPI_BYTE).
std::int64_t received_bytes(const MPI_Status& status);

// Whether `bytes` fits MPI's int count (the classic functions) or only the _c forms.
inline bool fits_int(std::int64_t bytes) { return bytes <= INT_MAX; }

// Moves `bytes` of MPI_PACKED data with the classic function where the count fits an int, else with
// its _c form: `call(real, count)` makes the call. False when neither exists (nothing was called).
template <typename Classic, typename Large, typename Call>
bool call_with_byte_count(Classic classic, Large large, std::int64_t bytes, int* result, Call call) {
  if (fits_int(bytes) && classic != nullptr) {
    *result = call(classic, static_cast<int>(bytes));
    return true;
  }
  if (large != nullptr) {
    *result = call(large, static_cast<MPI_Count>(bytes));
    return true;
  }
  return false;
}

// Reports an internal error that sent a call to MPI untouched (counted; printed when verbose).
void note_fallback(Function function, const char* what);

// The wrapped MPI function has no real counterpart in the loaded library: a broken setup.
int missing_real_function(const char* name);

}  // namespace pycomm::interpose
