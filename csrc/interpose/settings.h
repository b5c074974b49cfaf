// The environment switches of the interposer, read once, at the first MPI call it sees.
//
// Reading them at the first call rather than when the library is loaded lets a program (or a test)
// change its own environment before it starts using MPI, e.g. a Python rank that sets
// os.environ["PYCOMM_INTERPOSE"] = "0" before importing mpi4py.
//
//   PYCOMM_INTERPOSE=0            everything passes straight to MPI (calls are still counted)
//   PYCOMM_INTERPOSE_TYPES=0      no datatype is decoded at MPI_Type_commit, so none is handled
//   PYCOMM_INTERPOSE_PACK=0       MPI_Pack / MPI_Unpack go to MPI
//   PYCOMM_INTERPOSE_SEND=0       the send/receive family (Send, Recv, Isend, Irecv, Sendrecv,
//                                 Neighbor_alltoallw) goes to MPI
//   PYCOMM_INTERPOSE_MIN_BYTES=N  messages of fewer packed bytes go to MPI (default 0: every
//                                 non-contiguous message is packed by pycomm)
//   PYCOMM_INTERPOSE_COUNTERS=P   at MPI_Finalize, write the counters as JSON to file P; "%r" in P
//                                 is replaced by the rank in MPI_COMM_WORLD
//   PYCOMM_INTERPOSE_VERBOSE=1    say on standard error when a call falls back to MPI after an
//                                 internal error
// A switch is off when its value is 0, false, off or no (any case); unset means on.
#pragma once

#include <cstdint>
#include <string>

namespace pycomm::interpose {

struct Settings {
  bool enabled = true;
  bool types = true;
  bool pack = true;
  bool send = true;
  std::int64_t min_bytes = 0;
  std::string counters_path;
  bool verbose = false;

  bool types_on() const { return enabled && types; }
  bool pack_on() const { return enabled && types && pack; }
  bool send_on() const { return enabled && types && send; }
};

const Settings& settings();

}  // namespace pycomm::interpose
