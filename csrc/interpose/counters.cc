// The counters of counters.h, their JSON form and the file written at MPI_Finalize.
#include "interpose/counters.h"

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <sstream>

#include "interpose/mpi_api.h"
#include "interpose/request_table.h"
#include "interpose/settings.h"
#include "interpose/type_cache.h"

namespace pycomm::interpose {
namespace {

constexpr int kFunctionCount = static_cast<int>(Function::count);
constexpr int kEventCount = static_cast<int>(Event::count);

const char* const kFunctionNames[kFunctionCount] = {
#define PYCOMM_INTERPOSE_NAME(identifier, name) name,
    PYCOMM_INTERPOSE_FUNCTIONS(PYCOMM_INTERPOSE_NAME)
#undef PYCOMM_INTERPOSE_NAME
};

const char* const kEventNames[kEventCount] = {"types_cached", "types_unsupported", "fallbacks",
                                              "stale_requests", "abandoned_requests"};

struct Counts {
  std::atomic<std::int64_t> calls[kFunctionCount];
  std::atomic<std::int64_t> handled[kFunctionCount];
  std::atomic<std::int64_t> events[kEventCount];
};

// Zero-initialised static storage: usable from the first call, whatever the load order.
Counts counts;

const char* boolean(bool value) { return value ? "true" : "false"; }

}  // namespace

void count_call(Function function) {
  counts.calls[static_cast<int>(function)].fetch_add(1, std::memory_order_relaxed);
}

void count_handled(Function function, std::int64_t times) {
  counts.handled[static_cast<int>(function)].fetch_add(times, std::memory_order_relaxed);
}

void count_event(Event event) { counts.events[static_cast<int>(event)].fetch_add(1, std::memory_order_relaxed); }

std::string counters_json() {
  const Settings& active = settings();
  std::ostringstream out;
  out << "{\"settings\": {\"enabled\": " << boolean(active.enabled) << ", \"types\": " << boolean(active.types)
      << ", \"pack\": " << boolean(active.pack) << ", \"send\": " << boolean(active.send)
      << ", \"min_bytes\": " << active.min_bytes << "}, \"functions\": {";
  for (int index = 0; index < kFunctionCount; ++index) {
    out << (index ? ", " : "") << "\"" << kFunctionNames[index]
        << "\": {\"calls\": " << counts.calls[index].load(std::memory_order_relaxed)
        << ", \"handled\": " << counts.handled[index].load(std::memory_order_relaxed) << "}";
  }
  out << "}, \"events\": {";
  for (int index = 0; index < kEventCount; ++index) {
    out << (index ? ", " : "") << "\"" << kEventNames[index]
        << "\": " << counts.events[index].load(std::memory_order_relaxed);
  }
  out << "}, \"types_in_cache\": " << type_cache().size()
      << ", \"pending_requests\": " << request_table().size() << "}";
  return out.str();
}

void write_counters_file(int rank) {
  std::string path = settings().counters_path;
  if (path.empty()) {
    return;
  }
  for (auto at = path.find("%r"); at != std::string::npos; at = path.find("%r", at)) {
    const std::string rank_text = std::to_string(rank);
    path.replace(at, 2, rank_text);
    at += rank_text.size();
  }
  const std::string text = counters_json() + "\n";
  // Written beside the target and renamed, so a reader never sees half a file.
  const std::string partial = path + ".partial";
  FILE* file = std::fopen(partial.c_str(), "w");
  if (file == nullptr) {
    std::fprintf(stderr, "pycomm interposer: cannot write the counters to %s: %s\n", path.c_str(),
                 std::strerror(errno));
    return;
  }
  const bool written = std::fwrite(text.data(), 1, text.size(), file) == text.size();
  if (std::fclose(file) != 0 || !written || std::rename(partial.c_str(), path.c_str()) != 0) {
    std::fprintf(stderr, "pycomm interposer: cannot write the counters to %s\n", path.c_str());
    std::remove(partial.c_str());
  }
}

}  // namespace pycomm::interpose

// For C programs (dlsym) and Python (ctypes.CDLL(None)): the counters as JSON, written into
// `buffer` (always NUL-terminated when length > 0, cut short when too small, like snprintf).
// Returns the length of the whole text, so a caller can retry with a larger buffer.
PYCOMM_INTERPOSE_EXPORT size_t pycomm_interpose_counters(char* buffer, size_t length) {
  try {
    const std::string text = pycomm::interpose::counters_json();
    if (buffer != nullptr && length > 0) {
      const size_t copied = text.size() < length - 1 ? text.size() : length - 1;
      std::memcpy(buffer, text.data(), copied);
      buffer[copied] = '\0';
    }
    return text.size();
  } catch (...) {
    if (buffer != nullptr && length > 0) {
      buffer[0] = '\0';
    }
    return 0;
  }
}
