// MPI_Isend and MPI_Isend_c: the message is packed at once into a buffer of its own, sent as
// MPI_PACKED, and the buffer is kept in the request table until a wait or test completes the
// request (MPI forbids changing the send buffer before completion, so packing early is exact),
// or freed at once when MPI says the send is already complete.
#include <utility>

#include "interpose/counters.h"
#include "interpose/mpi_api.h"
#include "interpose/real_symbols.h"
#include "interpose/request_table.h"
#include "interpose/transfer.h"

namespace pycomm::interpose {
namespace {

bool isend_packed(const std::byte* data, std::int64_t bytes, int destination, int tag, MPI_Comm comm,
                  MPI_Request* request, int* result) {
  const auto call = [&](auto real, auto count) {
    return real(data, count, MPI_PACKED, destination, tag, comm, request);
  };
  return call_with_byte_count(PYCOMM_REAL(MPI_Isend), PYCOMM_REAL(MPI_Isend_c), bytes, result, call);
}

// A send that completed inside MPI_Isend (an eager message) needs no table entry: its packed copy
// can go now. This also matters for correctness of the table: MPICH hands out one shared,
// predefined handle for every send that completed at once, so such handles are not unique.
bool already_complete(MPI_Request request) {
  auto get_status = PYCOMM_REAL(MPI_Request_get_status);
  int flag = 0;
  return get_status != nullptr && get_status(request, &flag, MPI_STATUS_IGNORE) == MPI_SUCCESS && flag != 0;
}

bool isend_here(Function function, const void* buffer, std::int64_t count, MPI_Datatype datatype, int destination,
                int tag, MPI_Comm comm, MPI_Request* request, int* result) {
  if (destination == MPI_PROC_NULL || request == nullptr) {
    return false;
  }
  const auto transfer = plan_transfer(Part::message, buffer, count, datatype);
  if (!transfer.has_value() || (!fits_int(transfer->bytes) && PYCOMM_REAL(MPI_Isend_c) == nullptr)) {
    return false;
  }
  PendingRequest pending;
  try {
    pending.packed = PackedBuffer::owned(transfer->bytes);
    transfer->pack_into(pending.packed.data());
  } catch (...) {
    note_fallback(function, "packing a nonblocking send");
    return false;
  }
  if (!isend_packed(pending.packed.data(), transfer->bytes, destination, tag, comm, request, result)) {
    return false;
  }
  if (*result == MPI_SUCCESS && *request != MPI_REQUEST_NULL && !already_complete(*request)) {
    request_table().add(*request, std::move(pending));
  }
  count_handled(function);
  return true;
}

}  // namespace
}  // namespace pycomm::interpose

using namespace pycomm::interpose;

PYCOMM_INTERPOSE_EXPORT int MPI_Isend(const void* buf, int count, MPI_Datatype datatype, int dest, int tag,
                                      MPI_Comm comm, MPI_Request* request) {
  count_call(Function::isend);
  int result = MPI_SUCCESS;
  if (isend_here(Function::isend, buf, count, datatype, dest, tag, comm, request, &result)) {
    return result;
  }
  auto real = PYCOMM_REAL(MPI_Isend);
  return real ? forget_stale_request(real(buf, count, datatype, dest, tag, comm, request), request)
              : missing_real_function("MPI_Isend");
}

PYCOMM_INTERPOSE_EXPORT int MPI_Isend_c(const void* buf, MPI_Count count, MPI_Datatype datatype, int dest, int tag,
                                        MPI_Comm comm, MPI_Request* request) {
  count_call(Function::isend_c);
  int result = MPI_SUCCESS;
  if (isend_here(Function::isend_c, buf, count, datatype, dest, tag, comm, request, &result)) {
    return result;
  }
  auto real = PYCOMM_REAL(MPI_Isend_c);
  return real ? forget_stale_request(real(buf, count, datatype, dest, tag, comm, request), request)
              : missing_real_function("MPI_Isend_c");
}
