// One collective operation on a ring of peers: what it is, the byte layout it works on, and its
// progress. The ring engine (ring_engine.h) drives it; the caller waits on it.
//
// Ring operations work in scratch buffers they own and never write the caller's buffer while they
// run: the result is copied out only when the caller commits it. That is what lets an aborted
// operation leave the caller's input exactly as it was, and lets survivors of a failure agree to
// keep a result that every one of them holds (see the commit rule in pycomm/ft/communicator.py).
// The shared-memory all-reduce is the exception: it writes each round's result into the caller's
// buffer as soon as every peer reduced it (one copy of the data less), after saving that round's
// input in a backup from which restore_input() puts the input back if the group abandons it.
//
// Layout: the elements are cut into one chunk per peer (chunk c: the first count % n chunks hold
// one element more) and each chunk into segments of at most `segment_elements`, the unit that
// travels in one data frame and pipelines the ring.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "ft/scratch.h"
#include "ft/wire_codec.h"
#include "kernels/reduce.h"

namespace pycomm::ft {

enum class Collective : std::uint8_t { all_reduce = 1, broadcast = 2, all_gather = 3, reduce_scatter = 4 };

const char* collective_name(Collective collective);

// What every peer must agree on for one operation; sent in every data frame and checked.
struct OpSpec {
  Collective collective = Collective::all_reduce;
  DType dtype = DType::f32;
  kernels::ReduceOp op = kernels::ReduceOp::sum;  // all_reduce, reduce_scatter
  std::uint32_t root = 0;                          // broadcast
  // all_reduce, broadcast: elements of the buffer; all_gather: elements each peer contributes;
  // reduce_scatter: elements of the input (every peer's result is one chunk of it).
  std::uint64_t count = 0;
  std::uint64_t tag = 0;
  // all_reduce: what travels on the wire (see quantized_ring.cc); none sends the values as they are.
  WireQuantization quantization = WireQuantization::none;

  bool quantized() const { return quantization != WireQuantization::none; }
  bool same_operation(const OpSpec& other) const;
  std::string describe() const;
};

// Phases a data frame belongs to.
enum class Phase : std::uint8_t { reduce_scatter = 1, all_gather = 2, broadcast = 3, barrier = 4 };

struct ChunkLayout {
  std::uint64_t total = 0;  // elements over all chunks
  std::uint32_t chunks = 1;
  std::uint64_t segment_elements = 1;

  std::uint64_t chunk_begin(std::uint32_t chunk) const;
  std::uint64_t chunk_length(std::uint32_t chunk) const;
  std::uint32_t segments(std::uint32_t chunk) const;
  // Elements [first, first + length) of segment `segment` of `chunk`.
  std::uint64_t segment_begin(std::uint32_t chunk, std::uint32_t segment) const;
  std::uint64_t segment_length(std::uint32_t chunk, std::uint32_t segment) const;
};

enum class OpStatus : std::uint8_t { running, completed, failed };

// All-reduces of at most this many bytes gather the inputs and reduce locally (see RingOp).
inline constexpr std::uint64_t kGatherAllReduceBytes = 16 * 1024;

class RingOp {
 public:
  // `input` must stay valid and unchanged until the operation has completed or failed.
  // `in_place`: an all-reduce run by ShmAllReduce instead of the ring, which writes its result into
  // `in_place` (the caller's buffer, the same memory as `input`) while it runs; null for the ring.
  RingOp(const OpSpec& spec, std::uint64_t sequence, std::uint32_t rank, std::uint32_t world,
         std::uint64_t segment_bytes, const void* input, void* in_place = nullptr);

  const OpSpec& spec() const { return spec_; }
  std::uint64_t sequence() const { return sequence_; }
  std::size_t result_bytes() const { return shared_memory_ ? backup_.size() : result_.size(); }

  // Blocks until the operation completes or fails, or until the deadline; returns the status then.
  OpStatus wait(std::chrono::steady_clock::time_point deadline);
  OpStatus status() const;
  // True once this peer holds the whole result (it may still wait for the others to hold theirs).
  bool has_result() const;
  std::string error() const;
  // When this peer came to hold the whole result, and when the operation ended (completed: every
  // peer holds it; or failed); nullopt until then.
  std::optional<std::chrono::steady_clock::time_point> held_at() const;
  std::optional<std::chrono::steady_clock::time_point> finished_at() const;
  // Copies the result into `destination` (result_bytes() bytes). Allowed when completed, or after a
  // failure when has_result() is true and the group decided to keep it. Nothing to copy when
  // `destination` is the buffer a shared-memory all-reduce wrote its result into.
  void copy_result(void* destination) const;
  // After a failure: puts back the input a shared-memory all-reduce overwrote with results, for an
  // operation the group abandoned. Does nothing for other operations, or when nothing was written.
  void restore_input();

 private:
  friend class RingEngine;
  friend class ShmAllReduce;

  void finish(OpStatus status, const std::string& error);
  void mark_has_result();
  void restore_input_locked();

  const OpSpec spec_;
  const std::uint64_t sequence_;
  const std::uint32_t rank_;
  const std::uint32_t world_;
  const void* const input_;
  const DType accumulator_;
  ChunkLayout layout_;
  Scratch accumulator_buffer_;  // reduce phases, in accumulator_ elements
  Scratch result_;
  // Small all-reduces gather every peer's input (all-gather frames into this buffer) and reduce
  // them locally in rank order: one ring pass instead of two, the same bytes on every peer.
  Scratch gathered_;
  bool gathers_ = false;

  // Shared-memory progress (ShmAllReduce, engine thread only until the operation ends): the input
  // of every round started so far is in backup_[0, backed_up_bytes_), and written_ says whether
  // a result was written into in_place_ since (or since the last restore).
  void* const in_place_;
  const bool shared_memory_;
  Scratch backup_;
  std::uint64_t backed_up_bytes_ = 0;
  bool written_ = false;
  int shm_stage_ = 0;
  std::uint32_t shm_slot_ = 0;
  std::uint64_t shm_round_ = 0;
  std::uint64_t shm_rounds_ = 0;

  // Quantized all-reduce (quantized_ring.cc): records received in each reduce-scatter step, the
  // records this peer sends first, the final records of every chunk, and a float32 work area.
  Scratch wire_steps_;
  Scratch wire_first_;
  Scratch wire_results_;
  Scratch wire_scratch_;
  std::size_t wire_record_max_ = 0;  // bytes of the record of a whole segment

  // Where all-gather frames land: the gather buffer of a small all-reduce, else the result.
  unsigned char* all_gather_base() const { return gathers_ ? gathered_.data() : result_.data(); }

  // Progress, touched only by the engine's thread.
  std::uint64_t receives_left_ = 0;
  std::uint64_t sends_queued_ = 0;  // frames queued and not yet fully written
  std::vector<unsigned char> received_;  // one flag per expected data frame, to refuse duplicates
  std::uint32_t tokens_received_ = 0;
  std::vector<unsigned char> tokens_seen_;  // by hops travelled (1 to world - 1): one token each
  std::vector<std::uint32_t> held_tokens_;  // barrier tokens to forward once this peer is done
  bool data_done_ = false;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  OpStatus status_ = OpStatus::running;
  bool has_result_ = false;
  std::string error_;
  std::optional<std::chrono::steady_clock::time_point> held_at_;
  std::optional<std::chrono::steady_clock::time_point> finished_at_;
};

}  // namespace pycomm::ft
