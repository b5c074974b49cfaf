// The data plane of one epoch: a ring of peers, each holding a pool of TCP connections to the next
// peer (it only sends there) and one from the previous peer (it only receives from there).
//
// One thread per engine runs an event loop over every socket and a wake-up eventfd: it reads
// frames from the previous peer straight into the operations' scratch buffers, reduces them, and
// writes queued frames to the next peer without ever blocking on one socket while another has
// work. Striping: queued frames wait in one queue and each goes to the first connection to the next
// peer with room for it (a pooled connection holds at most kPoolUnsentBytes unsent), so one large
// operation spreads over the whole pool (a single TCP flow cannot fill a long, fat link with
// default buffers) in proportion to how fast each connection drains at the time. Frames are self-describing and placed wherever they arrive, so the
// pool needs no ordering between its connections. Operations are matched by (tag, sequence), where the sequence counts operations with that
// tag in this epoch, so any number of operations with different tags may be in flight, in any
// order on different peers. Frames for an operation this peer has not started yet are buffered
// (up to a limit).
//
// Every operation ends with a ring barrier: a peer returns only once it knows every peer holds the
// result. So if any peer returned, every peer holds the result; the commit rule of the control
// plane relies on it.
//
// Failure: the first error (a broken or silent connection, a frame that breaks the protocol,
// peers that disagree about an operation) or an abort() fails every operation in flight and stops
// the engine. An epoch's engine is never reused; the next epoch gets new connections.
//
// Thread-safety: submit(), abort() and the accessors may be called from any thread. Lock order:
// mutex_ before any RingOp's mutex.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "ft/ring_op.h"
#include "ft/shm_all_reduce.h"
#include "transport/tcp/socket.h"

namespace pycomm::ft {

struct EngineOptions {
  std::uint64_t segment_bytes = 256 * 1024;
  // Bytes this peer buffers for operations it has not started yet before failing the epoch.
  std::uint64_t max_early_bytes = std::uint64_t{1} << 30;
  // While operations are in flight, the loop polls without sleeping for this long after the last
  // event before it blocks: waking a sleeping thread costs more than one loopback hop.
  std::uint32_t spin_microseconds = 50;
  // One shared-memory segment name per rank when every peer of the ring runs on this machine:
  // all-reduces then go through shared memory (shm_all_reduce.h). Empty: everything on the ring.
  std::vector<std::string> shared_memory_names;
};

// Per tag: operations submitted in this epoch, and whether the last one is still unfinished.
struct TagState {
  std::uint64_t tag = 0;
  std::uint64_t submitted = 0;
  std::uint64_t completed = 0;
  bool outstanding_has_result = false;
};

class RingEngine {
 public:
  // `to_next` and `from_prev` are connected stream sockets, at least one each (both empty when
  // world == 1; with world == 2 they are different connections to the same peer).
  RingEngine(std::vector<transport::Socket> to_next, std::vector<transport::Socket> from_prev, std::uint32_t rank,
             std::uint32_t world, EngineOptions options = {});
  ~RingEngine();
  RingEngine(const RingEngine&) = delete;
  RingEngine& operator=(const RingEngine&) = delete;

  // Starts an operation. Its sequence number is the number of operations submitted with the same
  // tag before it in this engine. Fails at once (status failed) when the engine has failed.
  // `in_place`: the caller's writable buffer at `input`, for an all-reduce whose result goes back
  // into it; with shared memory such an all-reduce writes it there while it runs (see RingOp).
  std::shared_ptr<RingOp> submit(const OpSpec& spec, const void* input, void* in_place = nullptr);

  // Fails every operation in flight with `reason` and stops the loop; returns once it has stopped.
  void abort(const std::string& reason);

  bool failed() const;
  std::string failure() const;
  std::vector<TagState> tag_states() const;
  std::uint32_t rank() const { return rank_; }
  std::uint32_t world() const { return world_; }

  // Counters for benchmarks and tests.
  std::uint64_t bytes_sent() const { return bytes_sent_.load(); }
  std::uint64_t bytes_received() const { return bytes_received_.load(); }
  // Bytes sent on each connection to the next peer.
  std::vector<std::uint64_t> bytes_sent_per_connection() const;
  std::size_t connections() const { return outgoing_.size(); }

 private:
  struct OutFrame;
  struct EarlyFrame;
  struct Incoming;
  // One connection to the next peer and the frame it is writing (a frame, once started, goes on the
  // connection it started on; the others wait in pending_ for whichever connection has room first).
  struct Outgoing {
    transport::Socket socket;
    std::deque<OutFrame> queue;  // at most one frame
    std::atomic<std::uint64_t> sent{0};
  };
  // One connection from the previous peer and the frame being read from it.
  struct Receiving {
    transport::Socket socket;
    std::vector<unsigned char> header;
    std::size_t header_filled = 0;
    unsigned char* payload_target = nullptr;
    std::uint64_t payload_left = 0;
    std::vector<unsigned char> early_payload;
    std::unique_ptr<Incoming> incoming;
  };
  using OpKey = std::pair<std::uint64_t, std::uint64_t>;  // (tag, sequence)

  void run();
  void start(const std::shared_ptr<RingOp>& op);
  void run_locally(RingOp& op);
  void queue_data(const std::shared_ptr<RingOp>& op, Phase phase, std::uint32_t step,
                  std::uint32_t segment, const unsigned char* data, std::uint64_t bytes);
  void queue_token(const std::shared_ptr<RingOp>& op, std::uint32_t hops);
  void queue_frame(OutFrame frame);
  // Validates a frame's header against the operation it names; returns where its payload goes
  // (null for a barrier token, or for an early frame: then in.op is null too).
  unsigned char* place(Incoming& in);
  void complete(Incoming& in);
  void replay(const EarlyFrame& frame);
  void stash_early(EarlyFrame frame);
  void deliver(const std::shared_ptr<RingOp>& op, Phase phase, std::uint32_t step, std::uint32_t segment);
  void on_data_done(const std::shared_ptr<RingOp>& op);
  bool advance_shared_memory();
  // The quantized all-reduce (quantized_ring.cc).
  void start_quantized(const std::shared_ptr<RingOp>& op);
  unsigned char* place_quantized(RingOp& op, Phase phase, std::uint32_t step, std::uint32_t chunk,
                                 std::uint32_t segment, std::uint32_t length);
  void deliver_quantized(const std::shared_ptr<RingOp>& op, Phase phase, std::uint32_t step, std::uint32_t segment);
  static unsigned char* step_slot(const RingOp& op, std::uint32_t step, std::uint32_t segment);
  static unsigned char* result_slot(const RingOp& op, std::uint32_t chunk, std::uint32_t segment);
  static const unsigned char* input_at(const RingOp& op, std::uint64_t element);
  void complete_op(const std::shared_ptr<RingOp>& op);
  void reduce_gathered(RingOp& op);
  void maybe_complete(const std::shared_ptr<RingOp>& op);
  void read_available(Receiving& from);
  void write_available();
  void write_available(Outgoing& to);
  bool sending() const;
  void fail_all(const std::string& reason);
  void wake();

  std::vector<std::unique_ptr<Outgoing>> outgoing_;
  std::vector<std::unique_ptr<Receiving>> receiving_;
  const std::uint32_t rank_;
  const std::uint32_t world_;
  const EngineOptions options_;
  int wake_fd_ = -1;

  mutable std::mutex mutex_;
  std::vector<std::shared_ptr<RingOp>> submitted_;  // waiting for the loop to start them
  std::map<std::uint64_t, TagState> tags_;
  std::map<std::uint64_t, std::shared_ptr<RingOp>> latest_;  // per tag, its last operation
  std::uint32_t shared_memory_in_flight_ = 0;
  bool stopping_ = false;
  std::string failure_;

  // Loop state (engine thread only).
  std::map<OpKey, std::shared_ptr<RingOp>> active_;
  std::map<std::uint64_t, std::uint64_t> started_;  // per tag, operations the loop has started
  std::unique_ptr<ShmAllReduce> shared_memory_;
  std::vector<std::shared_ptr<RingOp>> shared_memory_ops_;
  std::map<OpKey, std::vector<EarlyFrame>> early_;
  std::uint64_t early_bytes_ = 0;
  std::deque<OutFrame> pending_;  // frames no connection has started, in the order they were queued
  std::size_t next_connection_ = 0;  // where the next write pass starts, so that all connections take turns

  std::atomic<std::uint64_t> bytes_sent_{0};
  std::atomic<std::uint64_t> bytes_received_{0};
  std::mutex join_mutex_;  // serialises joining thread_
  std::thread thread_;
  std::thread::id engine_thread_;  // thread_'s id, read without touching thread_
};

}  // namespace pycomm::ft
