// MPI_Recv and MPI_Recv_c: a receive into a non-contiguous type arrives as MPI_PACKED bytes in a
// temporary buffer (capacity: count objects' packed size) and is scattered into the program's
// buffer. The status keeps MPI's byte count, so MPI_Get_count on the program's type reports the
// same as after a typed receive; a truncated message is scattered as far as it arrived, and MPI's
// truncation error is returned unchanged.
#include "interpose/counters.h"
#include "interpose/mpi_api.h"
#include "interpose/real_symbols.h"
#include "interpose/transfer.h"

namespace pycomm::interpose {
namespace {

bool receive_packed(std::byte* data, std::int64_t bytes, int source, int tag, MPI_Comm comm, MPI_Status* status,
                    int* result) {
  const auto call = [&](auto real, auto count) { return real(data, count, MPI_PACKED, source, tag, comm, status); };
  return call_with_byte_count(PYCOMM_REAL(MPI_Recv), PYCOMM_REAL(MPI_Recv_c), bytes, result, call);
}

bool receive_here(Function function, void* buffer, std::int64_t count, MPI_Datatype datatype, int source, int tag,
                  MPI_Comm comm, MPI_Status* status, int* result) {
  if (source == MPI_PROC_NULL) {
    return false;
  }
  const auto transfer = plan_transfer(Part::message, buffer, count, datatype);
  if (!transfer.has_value() || (!fits_int(transfer->bytes) && PYCOMM_REAL(MPI_Recv_c) == nullptr)) {
    return false;
  }
  PackedBuffer packed;
  try {
    packed = PackedBuffer::borrowed(PackedBuffer::Slot::receive, transfer->bytes);
  } catch (...) {
    note_fallback(function, "allocating a receive buffer");
    return false;
  }
  // The byte count is needed even when the program ignores the status.
  MPI_Status own_status{};
  MPI_Status* used = status == MPI_STATUS_IGNORE ? &own_status : status;
  if (!receive_packed(packed.data(), transfer->bytes, source, tag, comm, used, result)) {
    return false;
  }
  if (data_arrived(*result)) {
    transfer->unpack_from(packed.data(), received_bytes(*used));
  }
  count_handled(function);
  return true;
}

}  // namespace
}  // namespace pycomm::interpose

using namespace pycomm::interpose;

PYCOMM_INTERPOSE_EXPORT int MPI_Recv(void* buf, int count, MPI_Datatype datatype, int source, int tag,
                                     MPI_Comm comm, MPI_Status* status) {
  count_call(Function::recv);
  int result = MPI_SUCCESS;
  if (receive_here(Function::recv, buf, count, datatype, source, tag, comm, status, &result)) {
    return result;
  }
  auto real = PYCOMM_REAL(MPI_Recv);
  return real ? real(buf, count, datatype, source, tag, comm, status) : missing_real_function("MPI_Recv");
}

PYCOMM_INTERPOSE_EXPORT int MPI_Recv_c(void* buf, MPI_Count count, MPI_Datatype datatype, int source, int tag,
                                       MPI_Comm comm, MPI_Status* status) {
  count_call(Function::recv_c);
  int result = MPI_SUCCESS;
  if (receive_here(Function::recv_c, buf, count, datatype, source, tag, comm, status, &result)) {
    return result;
  }
  auto real = PYCOMM_REAL(MPI_Recv_c);
  return real ? real(buf, count, datatype, source, tag, comm, status) : missing_real_function("MPI_Recv_c");
}
