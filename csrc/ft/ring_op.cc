#include "ft/ring_op.h"

#include <algorithm>
#include <cstring>
#include <sstream>

#include "common/error.h"
#include "ft/wire.h"

namespace pycomm::ft {

const char* collective_name(Collective collective) {
  switch (collective) {
    case Collective::all_reduce: return "all_reduce";
    case Collective::broadcast: return "broadcast";
    case Collective::all_gather: return "all_gather";
    case Collective::reduce_scatter: return "reduce_scatter";
  }
  return "unknown";
}

bool OpSpec::same_operation(const OpSpec& other) const {
  // The root means something to a broadcast only (an all-reduce's frames carry the wire
  // quantization in its place).
  return collective == other.collective && dtype == other.dtype && op == other.op &&
         (collective != Collective::broadcast || root == other.root) && count == other.count && tag == other.tag &&
         quantization == other.quantization;
}

std::string OpSpec::describe() const {
  std::ostringstream out;
  out << collective_name(collective) << "(tag " << tag << ", " << count << " x " << dtype_name(dtype);
  if (collective == Collective::all_reduce || collective == Collective::reduce_scatter) {
    out << ", op " << kernels::reduce_op_name(op);
  }
  if (collective == Collective::broadcast) out << ", root " << root;
  if (quantized()) out << ", " << wire_quantization_name(quantization) << " on the wire";
  out << ")";
  return out.str();
}

std::uint64_t ChunkLayout::chunk_begin(std::uint32_t chunk) const {
  const std::uint64_t base = total / chunks;
  return chunk * base + std::min<std::uint64_t>(chunk, total % chunks);
}

std::uint64_t ChunkLayout::chunk_length(std::uint32_t chunk) const {
  return total / chunks + (chunk < total % chunks ? 1 : 0);
}

std::uint32_t ChunkLayout::segments(std::uint32_t chunk) const {
  return static_cast<std::uint32_t>((chunk_length(chunk) + segment_elements - 1) / segment_elements);
}

std::uint64_t ChunkLayout::segment_begin(std::uint32_t chunk, std::uint32_t segment) const {
  return chunk_begin(chunk) + std::uint64_t{segment} * segment_elements;
}

std::uint64_t ChunkLayout::segment_length(std::uint32_t chunk, std::uint32_t segment) const {
  const std::uint64_t offset = std::uint64_t{segment} * segment_elements;
  return std::min(segment_elements, chunk_length(chunk) - offset);
}

namespace {

bool reduces(Collective collective) {
  return collective == Collective::all_reduce || collective == Collective::reduce_scatter;
}

}  // namespace

RingOp::RingOp(const OpSpec& spec, std::uint64_t sequence, std::uint32_t rank, std::uint32_t world,
               std::uint64_t segment_bytes, const void* input, void* in_place)
    : spec_(spec),
      sequence_(sequence),
      rank_(rank),
      world_(world),
      input_(input),
      accumulator_(reduces(spec.collective) ? kernels::accumulator_dtype(spec.dtype, spec.op) : spec.dtype),
      in_place_(in_place),
      shared_memory_(in_place != nullptr) {
  const std::size_t item = dtype_size(spec.dtype);
  const std::size_t widest = std::max(item, dtype_size(accumulator_));
  if (shared_memory_) {
    PYCOMM_ENFORCE(spec.collective == Collective::all_reduce && !spec.quantized() && in_place == input,
                   "only a plain all-reduce in place runs through shared memory");
    backup_ = Scratch(spec.count * item);
    return;
  }
  gathers_ = spec.collective == Collective::all_reduce && world > 1 && !spec.quantized() &&
             spec.count * item <= kGatherAllReduceBytes;
  layout_.chunks = spec.collective == Collective::broadcast ? 1 : world;
  layout_.total = spec.collective == Collective::all_gather || gathers_ ? spec.count * world : spec.count;
  layout_.segment_elements = std::max<std::uint64_t>(1, segment_bytes / widest);
  if (gathers_) {
    gathered_ = Scratch(layout_.total * item);
    result_ = Scratch(spec.count * item);
    return;
  }
  if (spec.quantized() && world > 1) {
    // Records of one segment each: a reduce-scatter step s frame carries s + 1 of them, and this
    // peer keeps s + 2 (its own in front) to forward at step s + 1; see quantized_ring.cc. The
    // last step's frame (world - 1 records) must fit a data frame.
    while (layout_.segment_elements > 1 &&
           std::uint64_t{world - 1} * wire_record_bytes(spec.quantization, layout_.segment_elements) >
               kMaxSegmentBytes) {
      layout_.segment_elements /= 2;
    }
    const std::uint64_t segments = layout_.segments(0);
    wire_record_max_ = wire_record_bytes(spec.quantization, layout_.segment_elements);
    const std::uint64_t slots = std::uint64_t{world - 1} * (world + 2) / 2;
    wire_steps_ = Scratch(slots * segments * wire_record_max_);
    wire_first_ = Scratch(segments * wire_record_max_);
    wire_results_ = Scratch(std::uint64_t{world} * segments * wire_record_max_);
    wire_scratch_ = Scratch(2 * layout_.segment_elements * sizeof(float));
  } else if (reduces(spec.collective)) {
    accumulator_buffer_ = Scratch(layout_.total * dtype_size(accumulator_));
  }
  const std::uint64_t result_elements =
      spec.collective == Collective::reduce_scatter ? layout_.chunk_length(rank) : layout_.total;
  result_ = Scratch(result_elements * item);
}

OpStatus RingOp::wait(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mutex_);
  changed_.wait_until(lock, deadline, [&] { return status_ != OpStatus::running; });
  return status_;
}

OpStatus RingOp::status() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return status_;
}

bool RingOp::has_result() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return has_result_;
}

std::string RingOp::error() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return error_;
}

std::optional<std::chrono::steady_clock::time_point> RingOp::held_at() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return held_at_;
}

std::optional<std::chrono::steady_clock::time_point> RingOp::finished_at() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return finished_at_;
}

void RingOp::copy_result(void* destination) const {
  std::lock_guard<std::mutex> lock(mutex_);
  PYCOMM_ENFORCE(has_result_, "the result of ", spec_.describe(), " is not complete on this peer");
  PYCOMM_ENFORCE(status_ != OpStatus::running, "the result of ", spec_.describe(),
                 " is still being sent to the other peers");
  if (shared_memory_) {
    if (destination != in_place_ && !backup_.empty()) std::memcpy(destination, in_place_, backup_.size());
    return;
  }
  if (!result_.empty()) std::memcpy(destination, result_.data(), result_.size());
}

void RingOp::restore_input() {
  std::lock_guard<std::mutex> lock(mutex_);
  PYCOMM_ENFORCE(status_ != OpStatus::running, "the input of ", spec_.describe(),
                 " cannot be restored while the operation runs");
  restore_input_locked();
}

void RingOp::restore_input_locked() {
  if (!written_) return;
  std::memcpy(in_place_, backup_.data(), backed_up_bytes_);
  written_ = false;
}

void RingOp::finish(OpStatus status, const std::string& error) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (status_ != OpStatus::running) return;
    status_ = status;
    error_ = error;
    finished_at_ = std::chrono::steady_clock::now();
    // A failed shared-memory all-reduce that wrote part of its result leaves the input, as a ring
    // operation does; one whose whole result is written keeps it until the group decides.
    if (status == OpStatus::failed && !has_result_) restore_input_locked();
  }
  changed_.notify_all();
}

void RingOp::mark_has_result() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!has_result_) held_at_ = std::chrono::steady_clock::now();
  has_result_ = true;
}

}  // namespace pycomm::ft
