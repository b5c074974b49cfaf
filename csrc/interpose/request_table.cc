// The table of pending packed transfers (see request_table.h).
#include "interpose/request_table.h"

#include <utility>

#include "interpose/counters.h"

namespace pycomm::interpose {

void RequestTable::add(MPI_Request request, PendingRequest pending) {
  std::lock_guard<std::mutex> lock(mutex_);
  const auto [entry, inserted] = pending_.insert_or_assign(request, std::move(pending));
  (void)entry;
  if (!inserted) {
    count_event(Event::stale_request);
  }
  size_.store(static_cast<std::int64_t>(pending_.size()), std::memory_order_relaxed);
}

std::optional<PendingRequest> RequestTable::take(MPI_Request request) {
  if (size() == 0) {
    return std::nullopt;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = pending_.find(request);
  if (found == pending_.end()) {
    return std::nullopt;
  }
  std::optional<PendingRequest> taken(std::move(found->second));
  pending_.erase(found);
  size_.store(static_cast<std::int64_t>(pending_.size()), std::memory_order_relaxed);
  return taken;
}

std::optional<bool> RequestTable::is_receive(MPI_Request request) const {
  if (size() == 0) {
    return std::nullopt;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  const auto found = pending_.find(request);
  if (found == pending_.end()) {
    return std::nullopt;
  }
  return found->second.receive.has_value();
}

void RequestTable::drop_stale(MPI_Request request) {
  if (size() == 0) {
    return;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = pending_.find(request);
  if (found != pending_.end()) {
    pending_.erase(found);
    size_.store(static_cast<std::int64_t>(pending_.size()), std::memory_order_relaxed);
    count_event(Event::stale_request);
  }
}

RequestTable& request_table() {
  // Never destroyed: requests may complete in MPI_Finalize, after static destructors ran.
  static RequestTable* const table = new RequestTable();
  return *table;
}

void finish_request(PendingRequest& pending, const MPI_Status& status, int error) {
  if (pending.receive.has_value() && data_arrived(error)) {
    pending.receive->unpack_from(pending.packed.data(), received_bytes(status));
  }
}

std::vector<WatchedRequest> watch_requests(int count, const MPI_Request* requests) {
  std::vector<WatchedRequest> watched;
  RequestTable& table = request_table();
  if (table.size() == 0 || requests == nullptr) {
    return watched;
  }
  for (int index = 0; index < count; ++index) {
    if (requests[index] == MPI_REQUEST_NULL) {
      continue;
    }
    const std::optional<bool> receive = table.is_receive(requests[index]);
    if (receive.has_value()) {
      watched.push_back({index, requests[index], *receive});
    }
  }
  return watched;
}

int forget_stale_request(int result, const MPI_Request* request) {
  if (result == MPI_SUCCESS && request != nullptr) {
    request_table().drop_stale(*request);
  }
  return result;
}

}  // namespace pycomm::interpose
