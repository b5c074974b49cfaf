// MPI_Pack, MPI_Unpack, MPI_Pack_size and their large-count forms.
//
// With a cached non-contiguous type, pycomm's CPU kernels write (or read) exactly the bytes
// MPI_Pack would, at *position, and advance *position by the same amount. A call that would not
// fit the buffer goes to MPI, which reports the error as it always does. MPI_Pack_size is only
// counted: MPI's answer may be an upper bound and the program must get MPI's own.
#include "interpose/counters.h"
#include "interpose/mpi_api.h"
#include "interpose/real_symbols.h"
#include "interpose/transfer.h"

namespace pycomm::interpose {
namespace {

template <typename Count>
bool pack_here(Function function, const void* input, Count input_count, MPI_Datatype datatype, void* output,
               Count output_size, Count* position) {
  if (position == nullptr || *position < 0 || output == nullptr) {
    return false;
  }
  const auto transfer = plan_transfer(Part::pack, input, input_count, datatype);
  if (!transfer.has_value() || static_cast<std::int64_t>(output_size) - *position < transfer->bytes) {
    return false;
  }
  try {
    transfer->pack_into(static_cast<std::byte*>(output) + *position);
  } catch (...) {
    note_fallback(function, "pack");
    return false;
  }
  *position += static_cast<Count>(transfer->bytes);
  count_handled(function);
  return true;
}

template <typename Count>
bool unpack_here(Function function, const void* input, Count input_size, Count* position, void* output,
                 Count output_count, MPI_Datatype datatype) {
  if (position == nullptr || *position < 0 || input == nullptr) {
    return false;
  }
  const auto transfer = plan_transfer(Part::pack, output, output_count, datatype);
  if (!transfer.has_value() || static_cast<std::int64_t>(input_size) - *position < transfer->bytes) {
    return false;
  }
  try {
    transfer->unpack_from(static_cast<const std::byte*>(input) + *position, transfer->bytes);
  } catch (...) {
    note_fallback(function, "unpack");
    return false;
  }
  *position += static_cast<Count>(transfer->bytes);
  count_handled(function);
  return true;
}

}  // namespace
}  // namespace pycomm::interpose

using namespace pycomm::interpose;

PYCOMM_INTERPOSE_EXPORT int MPI_Pack(const void* inbuf, int incount, MPI_Datatype datatype, void* outbuf,
                                     int outsize, int* position, MPI_Comm comm) {
  count_call(Function::pack);
  if (pack_here(Function::pack, inbuf, incount, datatype, outbuf, outsize, position)) {
    return MPI_SUCCESS;
  }
  auto real = PYCOMM_REAL(MPI_Pack);
  return real ? real(inbuf, incount, datatype, outbuf, outsize, position, comm) : missing_real_function("MPI_Pack");
}

PYCOMM_INTERPOSE_EXPORT int MPI_Pack_c(const void* inbuf, MPI_Count incount, MPI_Datatype datatype, void* outbuf,
                                       MPI_Count outsize, MPI_Count* position, MPI_Comm comm) {
  count_call(Function::pack_c);
  if (pack_here(Function::pack_c, inbuf, incount, datatype, outbuf, outsize, position)) {
    return MPI_SUCCESS;
  }
  auto real = PYCOMM_REAL(MPI_Pack_c);
  return real ? real(inbuf, incount, datatype, outbuf, outsize, position, comm) : missing_real_function("MPI_Pack_c");
}

PYCOMM_INTERPOSE_EXPORT int MPI_Unpack(const void* inbuf, int insize, int* position, void* outbuf, int outcount,
                                       MPI_Datatype datatype, MPI_Comm comm) {
  count_call(Function::unpack);
  if (unpack_here(Function::unpack, inbuf, insize, position, outbuf, outcount, datatype)) {
    return MPI_SUCCESS;
  }
  auto real = PYCOMM_REAL(MPI_Unpack);
  return real ? real(inbuf, insize, position, outbuf, outcount, datatype, comm) : missing_real_function("MPI_Unpack");
}

PYCOMM_INTERPOSE_EXPORT int MPI_Unpack_c(const void* inbuf, MPI_Count insize, MPI_Count* position, void* outbuf,
                                         MPI_Count outcount, MPI_Datatype datatype, MPI_Comm comm) {
  count_call(Function::unpack_c);
  if (unpack_here(Function::unpack_c, inbuf, insize, position, outbuf, outcount, datatype)) {
    return MPI_SUCCESS;
  }
  auto real = PYCOMM_REAL(MPI_Unpack_c);
  return real ? real(inbuf, insize, position, outbuf, outcount, datatype, comm)
              : missing_real_function("MPI_Unpack_c");
}

PYCOMM_INTERPOSE_EXPORT int MPI_Pack_size(int incount, MPI_Datatype datatype, MPI_Comm comm, int* size) {
  count_call(Function::pack_size);
  auto real = PYCOMM_REAL(MPI_Pack_size);
  return real ? real(incount, datatype, comm, size) : missing_real_function("MPI_Pack_size");
}

PYCOMM_INTERPOSE_EXPORT int MPI_Pack_size_c(MPI_Count incount, MPI_Datatype datatype, MPI_Comm comm,
                                            MPI_Count* size) {
  count_call(Function::pack_size_c);
  auto real = PYCOMM_REAL(MPI_Pack_size_c);
  return real ? real(incount, datatype, comm, size) : missing_real_function("MPI_Pack_size_c");
}
