// Parsing of the PYCOMM_INTERPOSE* environment switches (documented in settings.h).
#include "interpose/settings.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <strings.h>

namespace pycomm::interpose {
namespace {

bool switch_on(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) {
    return true;
  }
  for (const char* off : {"0", "false", "off", "no"}) {
    if (strcasecmp(value, off) == 0) {
      return false;
    }
  }
  return true;
}

std::int64_t byte_count(const char* name, std::int64_t fallback) {
  const char* value = std::getenv(name);
  if (value == nullptr || value[0] == '\0') {
    return fallback;
  }
  char* end = nullptr;
  errno = 0;
  const long long parsed = std::strtoll(value, &end, 10);
  if (errno != 0 || *end != '\0' || parsed < 0) {
    // A typo must not change what the program computes; say so and keep the default.
    std::fprintf(stderr, "pycomm interposer: ignoring %s=%s (expected a byte count >= 0)\n", name, value);
    return fallback;
  }
  return parsed;
}

Settings read_settings() {
  Settings read;
  read.enabled = switch_on("PYCOMM_INTERPOSE");
  read.types = switch_on("PYCOMM_INTERPOSE_TYPES");
  read.pack = switch_on("PYCOMM_INTERPOSE_PACK");
  read.send = switch_on("PYCOMM_INTERPOSE_SEND");
  read.min_bytes = byte_count("PYCOMM_INTERPOSE_MIN_BYTES", 0);
  const char* counters = std::getenv("PYCOMM_INTERPOSE_COUNTERS");
  read.counters_path = counters != nullptr ? counters : "";
  const char* verbose = std::getenv("PYCOMM_INTERPOSE_VERBOSE");
  read.verbose = verbose != nullptr && switch_on("PYCOMM_INTERPOSE_VERBOSE");
  return read;
}

}  // namespace

const Settings& settings() {
  // Never destroyed: MPI_Finalize may run from an exit handler, after static destructors.
  static const Settings* const read = new Settings(read_settings());
  return *read;
}

}  // namespace pycomm::interpose
