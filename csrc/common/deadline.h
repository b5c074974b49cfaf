// Deadlines: every blocking call in pycomm takes one (an absolute point on the steady clock), so a
// chain of calls shares one time budget instead of each restarting its own timeout.
#pragma once

#include <chrono>
#include <cstdint>

namespace pycomm {

using Clock = std::chrono::steady_clock;
using Deadline = Clock::time_point;

inline Deadline deadline_after(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

// Milliseconds left, rounded up so a wait never ends just before the deadline; 0 once it passed.
inline int remaining_milliseconds(Deadline deadline) {
  const auto left = deadline - Clock::now();
  if (left <= Clock::duration::zero()) return 0;
  const auto ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
  return ms > INT32_MAX ? INT32_MAX : static_cast<int>(ms);
}

}  // namespace pycomm
