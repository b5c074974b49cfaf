// MPI_Send and MPI_Send_c: a non-contiguous message is packed by pycomm and sent as MPI_PACKED
// bytes. A message sent MPI_PACKED may be received with any type of the same type signature, so a
// receiver without the interposer gets the same data as from a typed send.
#include "interpose/counters.h"
#include "interpose/mpi_api.h"
#include "interpose/real_symbols.h"
#include "interpose/transfer.h"

namespace pycomm::interpose {
namespace {

// Sends packed bytes with the classic call where the count fits an int, else with MPI_Send_c.
// False when neither can carry them (then nothing was sent).
bool send_packed(const std::byte* data, std::int64_t bytes, int destination, int tag, MPI_Comm comm, int* result) {
  const auto call = [&](auto real, auto count) { return real(data, count, MPI_PACKED, destination, tag, comm); };
  return call_with_byte_count(PYCOMM_REAL(MPI_Send), PYCOMM_REAL(MPI_Send_c), bytes, result, call);
}

// True when pycomm sent the message (its MPI result in *result).
bool send_here(Function function, const void* buffer, std::int64_t count, MPI_Datatype datatype, int destination,
               int tag, MPI_Comm comm, int* result) {
  if (destination == MPI_PROC_NULL) {
    return false;
  }
  const auto transfer = plan_transfer(Part::message, buffer, count, datatype);
  if (!transfer.has_value() || (!fits_int(transfer->bytes) && PYCOMM_REAL(MPI_Send_c) == nullptr)) {
    return false;
  }
  PackedBuffer packed;
  try {
    packed = PackedBuffer::borrowed(PackedBuffer::Slot::send, transfer->bytes);
    transfer->pack_into(packed.data());
  } catch (...) {
    note_fallback(function, "packing a send");
    return false;
  }
  if (!send_packed(packed.data(), transfer->bytes, destination, tag, comm, result)) {
    return false;
  }
  count_handled(function);
  return true;
}

}  // namespace
}  // namespace pycomm::interpose

using namespace pycomm::interpose;

PYCOMM_INTERPOSE_EXPORT int MPI_Send(const void* buf, int count, MPI_Datatype datatype, int dest, int tag,
                                     MPI_Comm comm) {
  count_call(Function::send);
  int result = MPI_SUCCESS;
  if (send_here(Function::send, buf, count, datatype, dest, tag, comm, &result)) {
    return result;
  }
  auto real = PYCOMM_REAL(MPI_Send);
  return real ? real(buf, count, datatype, dest, tag, comm) : missing_real_function("MPI_Send");
}

PYCOMM_INTERPOSE_EXPORT int MPI_Send_c(const void* buf, MPI_Count count, MPI_Datatype datatype, int dest, int tag,
                                       MPI_Comm comm) {
  count_call(Function::send_c);
  int result = MPI_SUCCESS;
  if (send_here(Function::send_c, buf, count, datatype, dest, tag, comm, &result)) {
    return result;
  }
  auto real = PYCOMM_REAL(MPI_Send_c);
  return real ? real(buf, count, datatype, dest, tag, comm) : missing_real_function("MPI_Send_c");
}
