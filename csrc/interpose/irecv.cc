// MPI_Irecv and MPI_Irecv_c: the message is received as MPI_PACKED bytes into a buffer of its own
// (capacity: count objects' packed size), which the request table keeps with the program's buffer
// and type; the wait or test that completes the request scatters what arrived.
#include <utility>

#include "interpose/counters.h"
#include "interpose/mpi_api.h"
#include "interpose/real_symbols.h"
#include "interpose/request_table.h"
#include "interpose/transfer.h"

namespace pycomm::interpose {
namespace {

bool irecv_packed(std::byte* data, std::int64_t bytes, int source, int tag, MPI_Comm comm, MPI_Request* request,
                  int* result) {
  const auto call = [&](auto real, auto count) { return real(data, count, MPI_PACKED, source, tag, comm, request); };
  return call_with_byte_count(PYCOMM_REAL(MPI_Irecv), PYCOMM_REAL(MPI_Irecv_c), bytes, result, call);
}

bool irecv_here(Function function, void* buffer, std::int64_t count, MPI_Datatype datatype, int source, int tag,
                MPI_Comm comm, MPI_Request* request, int* result) {
  if (source == MPI_PROC_NULL || request == nullptr) {
    return false;
  }
  auto transfer = plan_transfer(Part::message, buffer, count, datatype);
  if (!transfer.has_value() || (!fits_int(transfer->bytes) && PYCOMM_REAL(MPI_Irecv_c) == nullptr)) {
    return false;
  }
  PendingRequest pending;
  try {
    pending.packed = PackedBuffer::owned(transfer->bytes);
  } catch (...) {
    note_fallback(function, "allocating a nonblocking receive buffer");
    return false;
  }
  if (!irecv_packed(pending.packed.data(), transfer->bytes, source, tag, comm, request, result)) {
    return false;
  }
  if (*result == MPI_SUCCESS && *request != MPI_REQUEST_NULL) {
    pending.receive = std::move(transfer);
    request_table().add(*request, std::move(pending));
  }
  count_handled(function);
  return true;
}


}  // namespace
}  // namespace pycomm::interpose

using namespace pycomm::interpose;

PYCOMM_INTERPOSE_EXPORT int MPI_Irecv(void* buf, int count, MPI_Datatype datatype, int source, int tag,
                                      MPI_Comm comm, MPI_Request* request) {
  count_call(Function::irecv);
  int result = MPI_SUCCESS;
  if (irecv_here(Function::irecv, buf, count, datatype, source, tag, comm, request, &result)) {
    return result;
  }
  auto real = PYCOMM_REAL(MPI_Irecv);
  return real ? forget_stale_request(real(buf, count, datatype, source, tag, comm, request), request)
              : missing_real_function("MPI_Irecv");
}

PYCOMM_INTERPOSE_EXPORT int MPI_Irecv_c(void* buf, MPI_Count count, MPI_Datatype datatype, int source, int tag,
                                        MPI_Comm comm, MPI_Request* request) {
  count_call(Function::irecv_c);
  int result = MPI_SUCCESS;
  if (irecv_here(Function::irecv_c, buf, count, datatype, source, tag, comm, request, &result)) {
    return result;
  }
  auto real = PYCOMM_REAL(MPI_Irecv_c);
  return real ? forget_stale_request(real(buf, count, datatype, source, tag, comm, request), request)
              : missing_real_function("MPI_Irecv_c");
}
