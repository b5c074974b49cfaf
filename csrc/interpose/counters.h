// Per-function counts of what the interposer saw and what it did itself, readable while the
// program runs (pycomm_interpose_counters, exported for C programs and ctypes) and written as JSON
// at MPI_Finalize when PYCOMM_INTERPOSE_COUNTERS names a file.
//
// "calls" counts every call of a wrapper; "handled" counts the calls pycomm packed or unpacked
// itself (for the wait/test family: requests whose temporary buffer it completed). The counts are
// relaxed atomics: exact once the threads that made the calls are done, never a synchronisation
// point.
#pragma once

#include <cstdint>
#include <string>

namespace pycomm::interpose {

// Every wrapped MPI function: identifier, then the name the JSON uses.
#define PYCOMM_INTERPOSE_FUNCTIONS(X)                    \
  X(type_commit, "MPI_Type_commit")                      \
  X(type_free, "MPI_Type_free")                          \
  X(pack, "MPI_Pack")                                    \
  X(pack_c, "MPI_Pack_c")                                \
  X(unpack, "MPI_Unpack")                                \
  X(unpack_c, "MPI_Unpack_c")                            \
  X(pack_size, "MPI_Pack_size")                          \
  X(pack_size_c, "MPI_Pack_size_c")                      \
  X(send, "MPI_Send")                                    \
  X(send_c, "MPI_Send_c")                                \
  X(recv, "MPI_Recv")                                    \
  X(recv_c, "MPI_Recv_c")                                \
  X(isend, "MPI_Isend")                                  \
  X(isend_c, "MPI_Isend_c")                              \
  X(irecv, "MPI_Irecv")                                  \
  X(irecv_c, "MPI_Irecv_c")                              \
  X(sendrecv, "MPI_Sendrecv")                            \
  X(sendrecv_c, "MPI_Sendrecv_c")                        \
  X(wait, "MPI_Wait")                                    \
  X(waitall, "MPI_Waitall")                              \
  X(waitany, "MPI_Waitany")                              \
  X(waitsome, "MPI_Waitsome")                            \
  X(test, "MPI_Test")                                    \
  X(testall, "MPI_Testall")                              \
  X(testany, "MPI_Testany")                              \
  X(testsome, "MPI_Testsome")                            \
  X(request_free, "MPI_Request_free")                    \
  X(neighbor_alltoallw, "MPI_Neighbor_alltoallw")        \
  X(neighbor_alltoallw_c, "MPI_Neighbor_alltoallw_c")    \
  X(finalize, "MPI_Finalize")

enum class Function : int {
#define PYCOMM_INTERPOSE_ENUM(identifier, name) identifier,
  PYCOMM_INTERPOSE_FUNCTIONS(PYCOMM_INTERPOSE_ENUM)
#undef PYCOMM_INTERPOSE_ENUM
      count
};

// Events that are not one function's.
enum class Event : int {
  type_cached,       // a committed type was decoded and cached
  type_unsupported,  // a committed type could not be represented exactly (left to MPI)
  fallback,          // an internal error sent a call to MPI untouched
  stale_request,     // a request table entry whose handle MPI had already reused (completed elsewhere)
  abandoned_request, // MPI_Request_free on a pending pycomm receive: its data never arrive
  count
};

void count_call(Function function);
void count_handled(Function function, std::int64_t times = 1);
void count_event(Event event);

// The counters and the settings in force, as one JSON object.
std::string counters_json();

// Writes counters_json() to PYCOMM_INTERPOSE_COUNTERS ("%r" = rank); quiet when unset.
void write_counters_file(int rank);

}  // namespace pycomm::interpose
