// The nonblocking transfers pycomm packed itself: request -> temporary packed buffer (and, for a
// receive, where to unpack it).
//
// MPI_Isend sends the packed copy, which must live until the send completes; MPI_Irecv receives
// into a packed buffer that is scattered into the program's buffer when the request completes.
// Completion is seen by the wait/test wrappers (Wait, Waitall, Waitany, Waitsome and the Test
// forms), which look up each request before MPI completes it (MPI then nulls the handle).
// Thread-safe: one mutex guards the map; an empty table costs one atomic load per wait.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <optional>
#include <unordered_map>
#include <vector>

#include "interpose/mpi_api.h"
#include "interpose/transfer.h"

namespace pycomm::interpose {

struct PendingRequest {
  PackedBuffer packed;
  // Set for a receive: the program's buffer and type, unpacked into at completion.
  std::optional<PackedTransfer> receive;
};

class RequestTable {
 public:
  void add(MPI_Request request, PendingRequest pending);
  std::optional<PendingRequest> take(MPI_Request request);
  // Whether `request` has an entry, and then whether it is a receive.
  std::optional<bool> is_receive(MPI_Request request) const;
  // A fresh request from MPI cannot have an entry: one left behind was completed by a call this
  // library does not see, and MPI has reused its handle (so MPI is done with its buffer). Drops it.
  void drop_stale(MPI_Request request);
  std::int64_t size() const { return size_.load(std::memory_order_relaxed); }

 private:
  mutable std::mutex mutex_;
  std::unordered_map<MPI_Request, PendingRequest> pending_;
  std::atomic<std::int64_t> size_{0};
};

RequestTable& request_table();

// What pycomm owes a request MPI has just completed with `status` and error code `error`: a
// receive's packed bytes are unpacked into the program's buffer (a truncated one: what arrived);
// the packed buffer is freed.
void finish_request(PendingRequest& pending, const MPI_Status& status, int error);

// The requests among requests[0, count) that have table entries, noted before MPI completes them.
struct WatchedRequest {
  int index;
  MPI_Request handle;
  bool receive;
};
std::vector<WatchedRequest> watch_requests(int count, const MPI_Request* requests);

// For the wrappers that pass a request-creating call to MPI: drops a stale entry for the new
// request, returns `result`.
int forget_stale_request(int result, const MPI_Request* request);

}  // namespace pycomm::interpose
