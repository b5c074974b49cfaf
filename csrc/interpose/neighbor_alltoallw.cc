// MPI_Neighbor_alltoallw and MPI_Neighbor_alltoallw_c.
//
// Decision: each neighbour's block is judged on its own, with the point-to-point rule (cached,
// non-contiguous, CPU memory, at least PYCOMM_INTERPOSE_MIN_BYTES). Handled send blocks are packed
// into one temporary buffer and sent as MPI_PACKED; handled receive blocks arrive as MPI_PACKED in
// another and are scattered after the call. The other blocks keep their own type and address. To
// describe both kinds in one call every block is addressed absolutely (buffer MPI_BOTTOM,
// displacement = address), which MPI defines for exactly this. A collective has no status: each
// handled receive block arrives whole (the signatures must match), so it is unpacked whole.
#include <climits>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

#include "interpose/counters.h"
#include "interpose/mpi_api.h"
#include "interpose/real_symbols.h"
#include "interpose/transfer.h"

namespace pycomm::interpose {
namespace {

// Where packed blocks start inside a temporary buffer: 64-byte steps keep each block aligned.
constexpr std::int64_t kBlockAlignment = 64;

std::int64_t aligned(std::int64_t bytes) { return (bytes + kBlockAlignment - 1) / kBlockAlignment * kBlockAlignment; }

// The blocks of a neighbourhood collective on `comm`, by MPI's rules for each topology.
struct Neighbourhood {
  int sends = 0;
  int receives = 0;
  // Cartesian grids without wrap-around have MPI_PROC_NULL neighbours at their edges: MPI moves
  // nothing for those blocks, so pycomm must not scatter anything into them either.
  std::vector<bool> null_neighbour;
  bool is_null(int block) const { return block < static_cast<int>(null_neighbour.size()) && null_neighbour[block]; }
};

std::optional<Neighbourhood> neighbourhood_of(MPI_Comm comm) {
  auto topology_test = PYCOMM_REAL(MPI_Topo_test);
  int topology = MPI_UNDEFINED;
  if (topology_test == nullptr || topology_test(comm, &topology) != MPI_SUCCESS) {
    return std::nullopt;
  }
  Neighbourhood neighbourhood;
  if (topology == MPI_CART) {
    auto dimensions = PYCOMM_REAL(MPI_Cartdim_get);
    auto shift = PYCOMM_REAL(MPI_Cart_shift);
    int count = 0;
    if (dimensions == nullptr || shift == nullptr || dimensions(comm, &count) != MPI_SUCCESS) {
      return std::nullopt;
    }
    // Blocks 2d and 2d+1 are the neighbours at -1 and +1 along dimension d.
    for (int dimension = 0; dimension < count; ++dimension) {
      int minus = MPI_PROC_NULL, plus = MPI_PROC_NULL;
      if (shift(comm, dimension, 1, &minus, &plus) != MPI_SUCCESS) {
        return std::nullopt;
      }
      neighbourhood.null_neighbour.push_back(minus == MPI_PROC_NULL);
      neighbourhood.null_neighbour.push_back(plus == MPI_PROC_NULL);
    }
    neighbourhood.sends = neighbourhood.receives = 2 * count;
    return neighbourhood;
  }
  if (topology == MPI_GRAPH) {
    auto rank_of = PYCOMM_REAL(MPI_Comm_rank);
    auto neighbours = PYCOMM_REAL(MPI_Graph_neighbors_count);
    int rank = 0, count = 0;
    if (rank_of != nullptr && neighbours != nullptr && rank_of(comm, &rank) == MPI_SUCCESS &&
        neighbours(comm, rank, &count) == MPI_SUCCESS) {
      neighbourhood.sends = neighbourhood.receives = count;
      return neighbourhood;
    }
  } else if (topology == MPI_DIST_GRAPH) {
    auto neighbours = PYCOMM_REAL(MPI_Dist_graph_neighbors_count);
    int in = 0, out = 0, weighted = 0;
    if (neighbours != nullptr && neighbours(comm, &in, &out, &weighted) == MPI_SUCCESS) {
      neighbourhood.sends = out;
      neighbourhood.receives = in;
      return neighbourhood;
    }
  }
  return std::nullopt;
}

MPI_Aint address_of(const void* pointer) { return static_cast<MPI_Aint>(reinterpret_cast<std::uintptr_t>(pointer)); }

// One direction (all send blocks, or all receive blocks) rewritten for the call.
template <typename Count>
struct Blocks {
  std::vector<Count> counts;
  std::vector<MPI_Aint> displacements;
  std::vector<MPI_Datatype> types;
  std::vector<std::optional<PackedTransfer>> transfers;
  std::vector<std::int64_t> offsets;  // into `packed`, for handled blocks
  PackedBuffer packed;
  bool any_handled = false;

  // Plans every block; the buffer holding handled ones is allocated by allocate().
  void plan(const Neighbourhood& neighbourhood, const void* buffer, int blocks, const Count* program_counts,
            const MPI_Aint* program_displacements, const MPI_Datatype* program_types) {
    std::int64_t total = 0;
    for (int block = 0; block < blocks; ++block) {
      const void* origin = static_cast<const char*>(buffer) + program_displacements[block];
      std::optional<PackedTransfer> transfer;
      if (!neighbourhood.is_null(block)) {
        transfer = plan_transfer(Part::message, origin, program_counts[block], program_types[block]);
      }
      if (transfer.has_value() && std::is_same<Count, int>::value && !fits_int(transfer->bytes)) {
        transfer.reset();  // the classic call cannot count these bytes: leave the block to MPI
      }
      offsets.push_back(total);
      if (transfer.has_value()) {
        total += aligned(transfer->bytes);
        any_handled = true;
      }
      counts.push_back(transfer.has_value() ? static_cast<Count>(transfer->bytes) : program_counts[block]);
      types.push_back(transfer.has_value() ? MPI_PACKED : program_types[block]);
      displacements.push_back(address_of(origin));
      transfers.push_back(std::move(transfer));
    }
    if (any_handled) {
      packed = PackedBuffer::owned(total);
      for (size_t block = 0; block < transfers.size(); ++block) {
        if (transfers[block].has_value()) {
          displacements[block] = address_of(packed.data() + offsets[block]);
        }
      }
    }
  }

  void pack_all() const {
    for (size_t block = 0; block < transfers.size(); ++block) {
      if (transfers[block].has_value()) {
        transfers[block]->pack_into(packed.data() + offsets[block]);
      }
    }
  }

  void unpack_all() const {
    for (size_t block = 0; block < transfers.size(); ++block) {
      if (transfers[block].has_value()) {
        transfers[block]->unpack_from(packed.data() + offsets[block], transfers[block]->bytes);
      }
    }
  }
};

template <typename Count, typename Real>
bool alltoallw_here(Function function, Real real, const void* sendbuf, const Count sendcounts[],
                    const MPI_Aint sdispls[], const MPI_Datatype sendtypes[], void* recvbuf, const Count recvcounts[],
                    const MPI_Aint rdispls[], const MPI_Datatype recvtypes[], MPI_Comm comm, int* result) {
  if (sendbuf == MPI_IN_PLACE || real == nullptr) {
    return false;
  }
  const auto neighbourhood = neighbourhood_of(comm);
  if (!neighbourhood.has_value()) {
    return false;  // not a topology communicator: MPI reports the error
  }
  Blocks<Count> send, receive;
  try {
    send.plan(*neighbourhood, sendbuf, neighbourhood->sends, sendcounts, sdispls, sendtypes);
    receive.plan(*neighbourhood, recvbuf, neighbourhood->receives, recvcounts, rdispls, recvtypes);
    if (!send.any_handled && !receive.any_handled) {
      return false;
    }
    send.pack_all();
  } catch (...) {
    note_fallback(function, "packing a neighbourhood all-to-all");
    return false;
  }
  *result = real(MPI_BOTTOM, send.counts.data(), send.displacements.data(), send.types.data(), MPI_BOTTOM,
                 receive.counts.data(), receive.displacements.data(), receive.types.data(), comm);
  if (*result == MPI_SUCCESS) {
    receive.unpack_all();
  }
  count_handled(function);
  return true;
}

}  // namespace
}  // namespace pycomm::interpose

using namespace pycomm::interpose;

PYCOMM_INTERPOSE_EXPORT int MPI_Neighbor_alltoallw(const void* sendbuf, const int sendcounts[],
                                                   const MPI_Aint sdispls[], const MPI_Datatype sendtypes[],
                                                   void* recvbuf, const int recvcounts[], const MPI_Aint rdispls[],
                                                   const MPI_Datatype recvtypes[], MPI_Comm comm) {
  count_call(Function::neighbor_alltoallw);
  auto real = PYCOMM_REAL(MPI_Neighbor_alltoallw);
  if (real == nullptr) {
    return missing_real_function("MPI_Neighbor_alltoallw");
  }
  int result = MPI_SUCCESS;
  if (alltoallw_here(Function::neighbor_alltoallw, real, sendbuf, sendcounts, sdispls, sendtypes, recvbuf,
                     recvcounts, rdispls, recvtypes, comm, &result)) {
    return result;
  }
  return real(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts, rdispls, recvtypes, comm);
}

PYCOMM_INTERPOSE_EXPORT int MPI_Neighbor_alltoallw_c(const void* sendbuf, const MPI_Count sendcounts[],
                                                     const MPI_Aint sdispls[], const MPI_Datatype sendtypes[],
                                                     void* recvbuf, const MPI_Count recvcounts[],
                                                     const MPI_Aint rdispls[], const MPI_Datatype recvtypes[],
                                                     MPI_Comm comm) {
  count_call(Function::neighbor_alltoallw_c);
  auto real = PYCOMM_REAL(MPI_Neighbor_alltoallw_c);
  if (real == nullptr) {
    return missing_real_function("MPI_Neighbor_alltoallw_c");
  }
  int result = MPI_SUCCESS;
  if (alltoallw_here(Function::neighbor_alltoallw_c, real, sendbuf, sendcounts, sdispls, sendtypes, recvbuf,
                     recvcounts, rdispls, recvtypes, comm, &result)) {
    return result;
  }
  return real(sendbuf, sendcounts, sdispls, sendtypes, recvbuf, recvcounts, rdispls, recvtypes, comm);
}
