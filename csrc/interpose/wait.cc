// The completion calls: MPI_Wait, MPI_Waitall, MPI_Test, MPI_Testall (MPI 4 has no large-count
// forms of these), and MPI_Waitany, MPI_Waitsome, MPI_Testany, MPI_Testsome, MPI_Request_free,
// which must be seen too: a pycomm receive completed by any of them still has to be unpacked.
//
// Each notes which of its requests are pycomm's before calling MPI (MPI nulls a completed handle),
// makes sure a status exists for every pycomm receive (the byte count decides how much to
// unpack), and afterwards finishes the requests MPI completed.
#include <vector>

#include "interpose/counters.h"
#include "interpose/mpi_api.h"
#include "interpose/real_symbols.h"
#include "interpose/request_table.h"
#include "interpose/transfer.h"

namespace pycomm::interpose {
namespace {

bool any_receive(const std::vector<WatchedRequest>& watched) {
  for (const WatchedRequest& request : watched) {
    if (request.receive) {
      return true;
    }
  }
  return false;
}

const WatchedRequest* find_watched(const std::vector<WatchedRequest>& watched, int index) {
  for (const WatchedRequest& request : watched) {
    if (request.index == index) {
      return &request;
    }
  }
  return nullptr;
}

// Finishes a watched request if MPI completed it (its slot no longer holds its handle).
void finish_if_completed(Function function, const WatchedRequest& watched, const MPI_Request* requests,
                         const MPI_Status* status, int error) {
  if (requests[watched.index] == watched.handle) {
    return;  // still pending
  }
  auto pending = request_table().take(watched.handle);
  if (!pending.has_value()) {
    return;  // another thread finished it
  }
  static const MPI_Status kNoStatus{};
  finish_request(*pending, status != nullptr ? *status : kNoStatus, error);
  count_handled(function);
}

// Status array the program passed, or one of our own where it ignores statuses but a pycomm
// receive needs its byte count.
class Statuses {
 public:
  Statuses(MPI_Status* program, int count, bool needed)
      : own_(program == MPI_STATUSES_IGNORE && needed ? static_cast<size_t>(count) : 0),
        used_(own_.empty() ? program : own_.data()) {}
  MPI_Status* used() const { return used_; }
  const MPI_Status* at(int index) const { return used_ == MPI_STATUSES_IGNORE ? nullptr : &used_[index]; }
  // A request's own error: in its status when MPI says so, else the call's.
  int error(int index, int result) const {
    return result == MPI_ERR_IN_STATUS && at(index) != nullptr ? at(index)->MPI_ERROR : result;
  }

 private:
  std::vector<MPI_Status> own_;
  MPI_Status* used_;
};

// Shared by Waitall and Testall.
template <typename Call>
int complete_all(Function function, int count, MPI_Request requests[], MPI_Status* statuses, Call call) {
  const std::vector<WatchedRequest> watched = watch_requests(count, requests);
  if (watched.empty()) {
    return call(statuses);
  }
  const Statuses used(statuses, count, any_receive(watched));
  const int result = call(used.used());
  for (const WatchedRequest& request : watched) {
    finish_if_completed(function, request, requests, used.at(request.index), used.error(request.index, result));
  }
  return result;
}

// Shared by Waitany and Testany.
template <typename Call>
int complete_any(Function function, int count, MPI_Request requests[], int* index, MPI_Status* status, Call call) {
  const std::vector<WatchedRequest> watched = watch_requests(count, requests);
  if (watched.empty()) {
    return call(status);
  }
  MPI_Status own_status{};
  MPI_Status* used = status == MPI_STATUS_IGNORE && any_receive(watched) ? &own_status : status;
  const int result = call(used);
  if (index != nullptr && *index != MPI_UNDEFINED) {
    if (const WatchedRequest* request = find_watched(watched, *index)) {
      finish_if_completed(function, *request, requests, used == MPI_STATUS_IGNORE ? nullptr : used, result);
    }
  }
  return result;
}

// Shared by Waitsome and Testsome: statuses[k] belongs to requests[indices[k]].
template <typename Call>
int complete_some(Function function, int count, MPI_Request requests[], int* completed, int indices[],
                  MPI_Status* statuses, Call call) {
  const std::vector<WatchedRequest> watched = watch_requests(count, requests);
  if (watched.empty()) {
    return call(statuses);
  }
  const Statuses used(statuses, count, any_receive(watched));
  const int result = call(used.used());
  if (completed != nullptr && *completed != MPI_UNDEFINED) {
    for (int k = 0; k < *completed; ++k) {
      if (const WatchedRequest* request = find_watched(watched, indices[k])) {
        finish_if_completed(function, *request, requests, used.at(k), used.error(k, result));
      }
    }
  }
  return result;
}

}  // namespace
}  // namespace pycomm::interpose

using namespace pycomm::interpose;

PYCOMM_INTERPOSE_EXPORT int MPI_Wait(MPI_Request* request, MPI_Status* status) {
  count_call(Function::wait);
  auto real = PYCOMM_REAL(MPI_Wait);
  if (real == nullptr) {
    return missing_real_function("MPI_Wait");
  }
  const std::vector<WatchedRequest> watched = watch_requests(request != nullptr ? 1 : 0, request);
  if (watched.empty()) {
    return real(request, status);
  }
  MPI_Status own_status{};
  MPI_Status* used = status == MPI_STATUS_IGNORE && watched[0].receive ? &own_status : status;
  const int result = real(request, used);
  finish_if_completed(Function::wait, watched[0], request, used == MPI_STATUS_IGNORE ? nullptr : used, result);
  return result;
}

PYCOMM_INTERPOSE_EXPORT int MPI_Test(MPI_Request* request, int* flag, MPI_Status* status) {
  count_call(Function::test);
  auto real = PYCOMM_REAL(MPI_Test);
  if (real == nullptr) {
    return missing_real_function("MPI_Test");
  }
  const std::vector<WatchedRequest> watched = watch_requests(request != nullptr ? 1 : 0, request);
  if (watched.empty()) {
    return real(request, flag, status);
  }
  MPI_Status own_status{};
  MPI_Status* used = status == MPI_STATUS_IGNORE && watched[0].receive ? &own_status : status;
  const int result = real(request, flag, used);
  finish_if_completed(Function::test, watched[0], request, used == MPI_STATUS_IGNORE ? nullptr : used, result);
  return result;
}

PYCOMM_INTERPOSE_EXPORT int MPI_Waitall(int count, MPI_Request array_of_requests[],
                                        MPI_Status* array_of_statuses) {
  count_call(Function::waitall);
  auto real = PYCOMM_REAL(MPI_Waitall);
  if (real == nullptr) {
    return missing_real_function("MPI_Waitall");
  }
  return complete_all(Function::waitall, count, array_of_requests, array_of_statuses,
                      [&](MPI_Status* statuses) { return real(count, array_of_requests, statuses); });
}

PYCOMM_INTERPOSE_EXPORT int MPI_Testall(int count, MPI_Request array_of_requests[], int* flag,
                                        MPI_Status* array_of_statuses) {
  count_call(Function::testall);
  auto real = PYCOMM_REAL(MPI_Testall);
  if (real == nullptr) {
    return missing_real_function("MPI_Testall");
  }
  return complete_all(Function::testall, count, array_of_requests, array_of_statuses,
                      [&](MPI_Status* statuses) { return real(count, array_of_requests, flag, statuses); });
}

PYCOMM_INTERPOSE_EXPORT int MPI_Waitany(int count, MPI_Request array_of_requests[], int* index,
                                        MPI_Status* status) {
  count_call(Function::waitany);
  auto real = PYCOMM_REAL(MPI_Waitany);
  if (real == nullptr) {
    return missing_real_function("MPI_Waitany");
  }
  return complete_any(Function::waitany, count, array_of_requests, index, status,
                      [&](MPI_Status* used) { return real(count, array_of_requests, index, used); });
}

PYCOMM_INTERPOSE_EXPORT int MPI_Testany(int count, MPI_Request array_of_requests[], int* index, int* flag,
                                        MPI_Status* status) {
  count_call(Function::testany);
  auto real = PYCOMM_REAL(MPI_Testany);
  if (real == nullptr) {
    return missing_real_function("MPI_Testany");
  }
  return complete_any(Function::testany, count, array_of_requests, index, status,
                      [&](MPI_Status* used) { return real(count, array_of_requests, index, flag, used); });
}

PYCOMM_INTERPOSE_EXPORT int MPI_Waitsome(int incount, MPI_Request array_of_requests[], int* outcount,
                                         int array_of_indices[], MPI_Status array_of_statuses[]) {
  count_call(Function::waitsome);
  auto real = PYCOMM_REAL(MPI_Waitsome);
  if (real == nullptr) {
    return missing_real_function("MPI_Waitsome");
  }
  return complete_some(Function::waitsome, incount, array_of_requests, outcount, array_of_indices,
                       array_of_statuses, [&](MPI_Status* statuses) {
                         return real(incount, array_of_requests, outcount, array_of_indices, statuses);
                       });
}

PYCOMM_INTERPOSE_EXPORT int MPI_Testsome(int incount, MPI_Request array_of_requests[], int* outcount,
                                         int array_of_indices[], MPI_Status array_of_statuses[]) {
  count_call(Function::testsome);
  auto real = PYCOMM_REAL(MPI_Testsome);
  if (real == nullptr) {
    return missing_real_function("MPI_Testsome");
  }
  return complete_some(Function::testsome, incount, array_of_requests, outcount, array_of_indices,
                       array_of_statuses, [&](MPI_Status* statuses) {
                         return real(incount, array_of_requests, outcount, array_of_indices, statuses);
                       });
}

// Freeing an active request lets the operation finish unseen. Its packed buffer must then live
// for good (MPI may still read or write it); a receive's data never reach the program's buffer,
// which MPI gives no way to notice: counted as an abandoned request.
PYCOMM_INTERPOSE_EXPORT int MPI_Request_free(MPI_Request* request) {
  count_call(Function::request_free);
  auto real = PYCOMM_REAL(MPI_Request_free);
  if (real == nullptr) {
    return missing_real_function("MPI_Request_free");
  }
  if (request == nullptr || request_table().size() == 0) {
    return real(request);
  }
  const MPI_Request handle = *request;
  auto pending = request_table().take(handle);
  const int result = real(request);
  if (pending.has_value()) {
    if (result != MPI_SUCCESS) {
      request_table().add(handle, std::move(*pending));  // still the program's to complete
    } else {
      if (pending->receive.has_value()) {
        count_event(Event::abandoned_request);
      }
      (void)new PendingRequest(std::move(*pending));  // leaked on purpose, see above
      count_handled(Function::request_free);
    }
  }
  return result;
}
