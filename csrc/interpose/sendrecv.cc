// MPI_Sendrecv and MPI_Sendrecv_c: either half whose type is a cached non-contiguous one travels
// as MPI_PACKED bytes (packed before, scattered after), the other half as the program gave it.
// (MPI 4 has no MPI_IN_PLACE for Sendrecv; MPI_Sendrecv_replace is left to MPI.)
#include <optional>

#include "interpose/counters.h"
#include "interpose/mpi_api.h"
#include "interpose/real_symbols.h"
#include "interpose/transfer.h"

namespace pycomm::interpose {
namespace {

// One half of the exchange as MPI will see it: the program's arguments, or packed bytes.
struct Half {
  const void* buffer;
  std::int64_t count;
  MPI_Datatype datatype;
};

int call_sendrecv(const Half& send, int destination, int send_tag, const Half& receive, int source,
                  int receive_tag, MPI_Comm comm, MPI_Status* status, bool* called) {
  *called = true;
  if (fits_int(send.count) && fits_int(receive.count)) {
    if (auto real = PYCOMM_REAL(MPI_Sendrecv)) {
      return real(send.buffer, static_cast<int>(send.count), send.datatype, destination, send_tag,
                  const_cast<void*>(receive.buffer), static_cast<int>(receive.count), receive.datatype, source,
                  receive_tag, comm, status);
    }
  }
  if (auto real = PYCOMM_REAL(MPI_Sendrecv_c)) {
    return real(send.buffer, send.count, send.datatype, destination, send_tag, const_cast<void*>(receive.buffer),
                receive.count, receive.datatype, source, receive_tag, comm, status);
  }
  *called = false;
  return MPI_SUCCESS;
}

bool sendrecv_here(Function function, const Half& send, int destination, int send_tag, const Half& receive,
                   int source, int receive_tag, MPI_Comm comm, MPI_Status* status, int* result) {
  std::optional<PackedTransfer> send_transfer, receive_transfer;
  if (destination != MPI_PROC_NULL) {
    send_transfer = plan_transfer(Part::message, send.buffer, send.count, send.datatype);
  }
  if (source != MPI_PROC_NULL) {
    receive_transfer = plan_transfer(Part::message, receive.buffer, receive.count, receive.datatype);
  }
  if (!send_transfer.has_value() && !receive_transfer.has_value()) {
    return false;
  }
  Half send_as = send, receive_as = receive;
  PackedBuffer send_packed, receive_packed;
  try {
    if (send_transfer.has_value()) {
      send_packed = PackedBuffer::borrowed(PackedBuffer::Slot::send, send_transfer->bytes);
      send_transfer->pack_into(send_packed.data());
      send_as = {send_packed.data(), send_transfer->bytes, MPI_PACKED};
    }
    if (receive_transfer.has_value()) {
      receive_packed = PackedBuffer::borrowed(PackedBuffer::Slot::receive, receive_transfer->bytes);
      receive_as = {receive_packed.data(), receive_transfer->bytes, MPI_PACKED};
    }
  } catch (...) {
    note_fallback(function, "packing a sendrecv");
    return false;
  }
  MPI_Status own_status{};
  MPI_Status* used = status == MPI_STATUS_IGNORE && receive_transfer.has_value() ? &own_status : status;
  bool called = false;
  *result = call_sendrecv(send_as, destination, send_tag, receive_as, source, receive_tag, comm, used, &called);
  if (!called) {
    return false;
  }
  if (receive_transfer.has_value() && data_arrived(*result)) {
    receive_transfer->unpack_from(receive_packed.data(), received_bytes(*used));
  }
  count_handled(function);
  return true;
}

}  // namespace
}  // namespace pycomm::interpose

using namespace pycomm::interpose;

PYCOMM_INTERPOSE_EXPORT int MPI_Sendrecv(const void* sendbuf, int sendcount, MPI_Datatype sendtype, int dest,
                                         int sendtag, void* recvbuf, int recvcount, MPI_Datatype recvtype,
                                         int source, int recvtag, MPI_Comm comm, MPI_Status* status) {
  count_call(Function::sendrecv);
  int result = MPI_SUCCESS;
  if (sendrecv_here(Function::sendrecv, {sendbuf, sendcount, sendtype}, dest, sendtag,
                    {recvbuf, recvcount, recvtype}, source, recvtag, comm, status, &result)) {
    return result;
  }
  auto real = PYCOMM_REAL(MPI_Sendrecv);
  return real ? real(sendbuf, sendcount, sendtype, dest, sendtag, recvbuf, recvcount, recvtype, source, recvtag,
                     comm, status)
              : missing_real_function("MPI_Sendrecv");
}

PYCOMM_INTERPOSE_EXPORT int MPI_Sendrecv_c(const void* sendbuf, MPI_Count sendcount, MPI_Datatype sendtype,
                                           int dest, int sendtag, void* recvbuf, MPI_Count recvcount,
                                           MPI_Datatype recvtype, int source, int recvtag, MPI_Comm comm,
                                           MPI_Status* status) {
  count_call(Function::sendrecv_c);
  int result = MPI_SUCCESS;
  if (sendrecv_here(Function::sendrecv_c, {sendbuf, sendcount, sendtype}, dest, sendtag,
                    {recvbuf, recvcount, recvtype}, source, recvtag, comm, status, &result)) {
    return result;
  }
  auto real = PYCOMM_REAL(MPI_Sendrecv_c);
  return real ? real(sendbuf, sendcount, sendtype, dest, sendtag, recvbuf, recvcount, recvtype, source, recvtag,
                     comm, status)
              : missing_real_function("MPI_Sendrecv_c");
}
