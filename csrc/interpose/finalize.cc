// MPI_Finalize: the last moment the counters can learn the rank, so the counters file is written
// here (PYCOMM_INTERPOSE_COUNTERS), before MPI shuts down.
#include "interpose/counters.h"
#include "interpose/mpi_api.h"
#include "interpose/real_symbols.h"
#include "interpose/transfer.h"

using namespace pycomm::interpose;

PYCOMM_INTERPOSE_EXPORT int MPI_Finalize(void) {
  count_call(Function::finalize);
  auto real = PYCOMM_REAL(MPI_Finalize);
  if (real == nullptr) {
    return missing_real_function("MPI_Finalize");
  }
  try {
    int rank = 0;
    if (auto rank_of = PYCOMM_REAL(MPI_Comm_rank)) {
      rank_of(MPI_COMM_WORLD, &rank);
    }
    write_counters_file(rank);
  } catch (...) {
    // Counters are a report; finalising MPI matters more.
  }
  return real();
}
