// All-reduce through shared memory, for an epoch whose peers all run on one machine.
//
// The data is cut into rounds of half a slot buffer; consecutive rounds alternate between the two
// halves. In each round every peer (1) copies its piece of input into its half and into the
// operation's backup, (2) once every peer's piece is there, reduces its own element chunk of the
// piece over all peers' pieces in rank order (one pass, float32 accumulation for 16-bit floats, as
// the kernels do), in place in its half, and (3) once every chunk is reduced, copies every peer's
// chunk into the caller's buffer. Each chunk is reduced once, by one peer, and everyone copies the
// same bytes: identical results everywhere. An all-reduce of at most 16 KiB skips the chunks: every
// peer reduces the whole piece over all peers' pieces in rank order itself (the same kernels on
// every peer: the same bytes), one wait for the others less. The data moves through hot half-buffers, and the
// result is written where it is wanted: each peer reads and writes its buffer about three times,
// not four (a separate result buffer would need a copy more). The backup is what restores the
// caller's input when the group abandons the operation (RingOp::restore_input()).
//
// A round refills a half only when every peer copied out the round before, which used it; a peer
// finishes only when every peer copied every round, then frees its slot.
//
// Nothing here blocks: advance() moves an operation as far as it can and the ring engine's loop
// calls it again; failures (a peer that dies, stalls or disagrees) end the epoch as they do for
// the ring (the TCP links and the master still detect them).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ft/ring_op.h"
#include "ft/shm_segment.h"

namespace pycomm::ft {

class ShmAllReduce {
 public:
  // `names`: every rank's segment name for this epoch; this peer creates names[rank].
  ShmAllReduce(std::vector<std::string> names, std::uint32_t rank);

  // Moves `op` on; returns true if it made progress. Throws ProtocolError when peers disagree.
  bool advance(RingOp& op);
  bool finished(const RingOp& op) const { return op.shm_stage_ == kDone; }

 private:
  static constexpr int kClaim = 0, kInput = 1, kReduce = 2, kCopyOut = 3, kFinish = 4, kDone = 5;

  ShmSlot* find_slot(std::uint32_t peer, const RingOp& op);
  bool every_peer(RingOp& op, bool (*ready)(const ShmSlot&, std::uint64_t), std::uint64_t value);
  // The half of `peer`'s slot buffer that the current round of `op` uses (its slot must exist).
  unsigned char* half(std::uint32_t peer, const RingOp& op);

  std::vector<std::string> names_;
  std::uint32_t rank_;
  std::uint32_t world_;
  std::vector<std::unique_ptr<ShmSegment>> segments_;  // opened lazily; [rank_] is this peer's
};

}  // namespace pycomm::ft
