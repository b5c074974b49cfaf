#include "ft/ring_engine.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "ft/wire.h"

namespace pycomm::ft {

struct RingEngine::OutFrame {
  DataHeaderBytes header;
  const unsigned char* data;
  std::uint64_t bytes;
  std::uint64_t written;  // of header + data
  std::shared_ptr<RingOp> op;
};

struct RingEngine::Incoming {
  DataHeader header;
  std::shared_ptr<RingOp> op;  // null: an early frame, buffered
};

struct RingEngine::EarlyFrame {
  DataHeader header;
  std::vector<unsigned char> payload;
};

namespace {

// Unsent bytes a connection of a pool may hold in its socket (TCP_NOTSENT_LOWAT); what it has in
// flight is up to its window as before. Enough for a few milliseconds of one connection at 1 Gbit/s.
constexpr int kPoolUnsentBytes = 256 * 1024;

// What an early frame costs besides its payload (its header and bookkeeping): charged against
// max_early_bytes too, so a flood of empty frames is bounded like a flood of data.
constexpr std::uint64_t kEarlyFrameOverhead = kDataHeaderBytes + 128;

std::uint32_t ring_index(std::int64_t value, std::uint32_t world) {
  const auto n = static_cast<std::int64_t>(world);
  return static_cast<std::uint32_t>(((value % n) + n) % n);
}

// Chunks a peer receives in the reduce-scatter / all-gather step `step` (it sends the one it
// received in the step before). After world - 1 reduce-scatter steps, peer r holds chunk r reduced.
std::uint32_t reduce_scatter_chunk(std::uint32_t rank, std::uint32_t step, std::uint32_t world) {
  return ring_index(std::int64_t{rank} - step - 2, world);
}
std::uint32_t all_gather_chunk(std::uint32_t rank, std::uint32_t step, std::uint32_t world) {
  return ring_index(std::int64_t{rank} - step - 1, world);
}

bool has_phase(Collective collective, Phase phase) {
  switch (phase) {
    case Phase::reduce_scatter:
      return collective == Collective::all_reduce || collective == Collective::reduce_scatter;
    case Phase::all_gather: return collective == Collective::all_reduce || collective == Collective::all_gather;
    case Phase::broadcast: return collective == Collective::broadcast;
    case Phase::barrier: return true;
  }
  return false;
}

void set_non_blocking(int fd) {
  const int flags = fcntl(fd, F_GETFL, 0);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    PYCOMM_THROW(IoError, "fcntl(O_NONBLOCK): ", std::strerror(errno));
  }
}

std::string socket_error(int fd) {
  int error = 0;
  socklen_t length = sizeof error;
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length);
  return error == 0 ? std::string("connection closed") : std::string(std::strerror(error));
}

}  // namespace

RingEngine::RingEngine(std::vector<transport::Socket> to_next, std::vector<transport::Socket> from_prev,
                       std::uint32_t rank, std::uint32_t world, EngineOptions options)
    : rank_(rank), world_(world), options_(options) {
  PYCOMM_ENFORCE(world >= 1 && rank < world, "rank ", rank, " is outside a ring of ", world, " peers");
  PYCOMM_ENFORCE(options.segment_bytes >= 64 && options.segment_bytes <= kMaxSegmentBytes,
                 "segment_bytes must be in [64, ", kMaxSegmentBytes, "], got ", options.segment_bytes);
  if (world == 1) return;
  PYCOMM_ENFORCE(!to_next.empty() && !from_prev.empty(), "a ring of ", world,
                 " peers needs connections to the next and from the previous peer");
  for (transport::Socket& socket : to_next) {
    PYCOMM_ENFORCE(socket.valid(), "a connection to the next peer is not open");
    set_non_blocking(socket.fd());
    if (to_next.size() > 1) {
      // A pool's connections take frames as they drain (write_available()); without this limit the
      // first writable one would take megabytes into its send buffer that a slower moment of that
      // connection then holds up.
      const int unsent = kPoolUnsentBytes;
      setsockopt(socket.fd(), IPPROTO_TCP, TCP_NOTSENT_LOWAT, &unsent, sizeof unsent);
    }
    outgoing_.push_back(std::make_unique<Outgoing>());
    outgoing_.back()->socket = std::move(socket);
  }
  for (transport::Socket& socket : from_prev) {
    PYCOMM_ENFORCE(socket.valid(), "a connection from the previous peer is not open");
    set_non_blocking(socket.fd());
    receiving_.push_back(std::make_unique<Receiving>());
    Receiving& from = *receiving_.back();
    from.socket = std::move(socket);
    from.header.resize(kDataHeaderBytes);
    from.incoming = std::make_unique<Incoming>();
  }
  wake_fd_ = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd_ < 0) PYCOMM_THROW(IoError, "eventfd: ", std::strerror(errno));
  if (!options_.shared_memory_names.empty()) {
    PYCOMM_ENFORCE(options_.shared_memory_names.size() == world, "one shared-memory name per rank is needed, got ",
                   options_.shared_memory_names.size(), " for ", world);
    shared_memory_ = std::make_unique<ShmAllReduce>(options_.shared_memory_names, rank);
  }
  thread_ = std::thread([this] { run(); });
  engine_thread_ = thread_.get_id();
}

RingEngine::~RingEngine() {
  abort("the ring was closed");
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

std::shared_ptr<RingOp> RingEngine::submit(const OpSpec& spec, const void* input, void* in_place) {
  std::shared_ptr<RingOp> op;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    TagState& state = tags_[spec.tag];
    state.tag = spec.tag;
    PYCOMM_ENFORCE(state.submitted == state.completed, "an operation with tag ", spec.tag,
                   " is already in flight; concurrent operations need different tags");
    // A quantized all-reduce runs on the ring even among co-located peers: its result is defined by
    // what its wire quantization keeps.
    const bool shared = shared_memory_ != nullptr && spec.collective == Collective::all_reduce && !spec.quantized() &&
                        in_place != nullptr;
    if (shared) {
      // Each peer has kShmSlots slots; more operations in flight, issued in different orders on
      // different peers, could each hold slots the others wait for.
      PYCOMM_ENFORCE_TYPE(NotSupported, shared_memory_in_flight_ < kShmSlots, "at most ", kShmSlots,
                          " shared-memory all-reduces may be in flight at once on a peer; wait for one "
                          "first, or create the Communicator with shared_memory=False");
    }
    // Built before any count changes: a RingOp that cannot be built (its buffers) leaves no trace.
    op = std::make_shared<RingOp>(spec, state.submitted, rank_, world_, options_.segment_bytes, input,
                                  shared ? in_place : nullptr);
    state.submitted++;
    if (shared) shared_memory_in_flight_++;
    latest_[spec.tag] = op;
    if (stopping_) {
      op->finish(OpStatus::failed, failure_);
      return op;
    }
    if (world_ > 1) {
      submitted_.push_back(op);
      wake();
      return op;
    }
  }
  run_locally(*op);
  return op;
}

void RingEngine::run_locally(RingOp& op) {
  const OpSpec& spec = op.spec();
  const std::uint64_t n = op.layout_.total;
  if (spec.collective == Collective::all_reduce || spec.collective == Collective::reduce_scatter) {
    kernels::widen(op.accumulator_buffer_.data(), op.input_, n, spec.dtype, spec.op);
    kernels::finalize(op.result_.data(), op.accumulator_buffer_.data(), n, spec.dtype, spec.op, 1);
  } else if (!op.result_.empty()) {
    std::memcpy(op.result_.data(), op.input_, op.result_.size());
  }
  op.mark_has_result();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    tags_[spec.tag].completed++;
  }
  op.finish(OpStatus::completed, "");
}

void RingEngine::abort(const std::string& reason) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!stopping_) {
      stopping_ = true;
      failure_ = reason;
    }
  }
  wake();
  if (engine_thread_ == std::this_thread::get_id()) return;
  // Several threads may abort at once (the caller's deadline, the control plane, close()).
  std::lock_guard<std::mutex> lock(join_mutex_);
  if (thread_.joinable()) thread_.join();
}

bool RingEngine::failed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stopping_;
}

std::string RingEngine::failure() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return failure_;
}

std::vector<TagState> RingEngine::tag_states() const {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<TagState> states;
  for (const auto& [tag, state] : tags_) {
    states.push_back(state);
    if (state.submitted > state.completed) states.back().outstanding_has_result = latest_.at(tag)->has_result();
  }
  return states;
}

void RingEngine::wake() {
  if (wake_fd_ < 0) return;
  const std::uint64_t one = 1;
  [[maybe_unused]] const ssize_t written = ::write(wake_fd_, &one, sizeof one);
}

std::vector<std::uint64_t> RingEngine::bytes_sent_per_connection() const {
  std::vector<std::uint64_t> sent;
  for (const auto& to : outgoing_) sent.push_back(to->sent.load());
  return sent;
}

bool RingEngine::sending() const {
  return !pending_.empty() ||
         std::any_of(outgoing_.begin(), outgoing_.end(), [](const auto& to) { return !to->queue.empty(); });
}

void RingEngine::run() {
  try {
    const auto spin = std::chrono::microseconds(options_.spin_microseconds);
    auto last_event = Clock::now();
    // [0]: the wake-up eventfd; then every connection from the previous peer; then every one to the next.
    std::vector<pollfd> fds(1 + receiving_.size() + outgoing_.size());
    fds[0] = {wake_fd_, POLLIN, 0};
    for (std::size_t i = 0; i < receiving_.size(); ++i) fds[1 + i] = {receiving_[i]->socket.fd(), POLLIN, 0};
    const std::size_t first_out = 1 + receiving_.size();
    while (true) {
      std::vector<std::shared_ptr<RingOp>> starting;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (stopping_) break;
        starting.swap(submitted_);
      }
      for (const auto& op : starting) start(op);
      if (advance_shared_memory()) last_event = Clock::now();
      write_available();
      for (std::size_t i = 0; i < outgoing_.size(); ++i) {
        const bool has_work = !outgoing_[i]->queue.empty() || !pending_.empty();
        fds[first_out + i] = {outgoing_[i]->socket.fd(), static_cast<short>(has_work ? POLLOUT : 0), 0};
      }
      if (!starting.empty()) last_event = Clock::now();
      const bool busy = !active_.empty() || sending();
      int timeout = busy && Clock::now() - last_event < spin ? 0 : -1;
      if (!shared_memory_ops_.empty()) {
        // Shared memory rings no bell: poll it, yielding the core, and after a while without
        // progress (a peer that has not started the operation yet) every millisecond.
        timeout = Clock::now() - last_event < std::chrono::milliseconds(50) ? 0 : 1;
      }
      const int ready = ::poll(fds.data(), fds.size(), timeout);
      if (ready < 0) {
        if (errno == EINTR) continue;
        PYCOMM_THROW(IoError, "poll: ", std::strerror(errno));
      }
      if (ready == 0) {
        // Spinning: let a thread that has work (a co-located peer on a busy machine) run first.
        sched_yield();
        continue;
      }
      last_event = Clock::now();
      if (fds[0].revents != 0) {
        std::uint64_t drained = 0;
        [[maybe_unused]] const ssize_t got = ::read(wake_fd_, &drained, sizeof drained);
      }
      for (std::size_t i = 0; i < receiving_.size(); ++i) {
        if (fds[1 + i].revents != 0) read_available(*receiving_[i]);
      }
      for (std::size_t i = 0; i < outgoing_.size(); ++i) {
        if ((fds[first_out + i].revents & (POLLERR | POLLHUP)) != 0) {
          PYCOMM_THROW(IoError, "connection ", i, " to the next peer (rank ", (rank_ + 1) % world_,
                       ") failed: ", socket_error(outgoing_[i]->socket.fd()));
        }
      }
    }
    std::string reason;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      reason = failure_;
    }
    fail_all(reason);
  } catch (const std::exception& error) {
    fail_all(error.what());
  }
}

void RingEngine::fail_all(const std::string& reason) {
  std::vector<std::shared_ptr<RingOp>> ops;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    if (failure_.empty()) failure_ = reason;
    ops.swap(submitted_);
  }
  for (const auto& [key, op] : active_) ops.push_back(op);
  for (const auto& op : ops) op->finish(OpStatus::failed, reason);
  active_.clear();
  shared_memory_ops_.clear();
  early_.clear();
  pending_.clear();
  // Wakes the neighbours at once instead of leaving them to their deadlines.
  for (const auto& to : outgoing_) {
    to->queue.clear();
    ::shutdown(to->socket.fd(), SHUT_RDWR);
  }
  for (const auto& from : receiving_) ::shutdown(from->socket.fd(), SHUT_RDWR);
}

void RingEngine::start(const std::shared_ptr<RingOp>& op) {
  RingOp& o = *op;
  const OpSpec& spec = o.spec();
  const ChunkLayout& layout = o.layout_;
  const std::uint32_t n = world_;
  const std::size_t item = dtype_size(spec.dtype);
  const std::size_t accumulator_item = dtype_size(o.accumulator_);
  const std::uint32_t max_segments = layout.segments(0);
  active_[{spec.tag, o.sequence()}] = op;
  started_[spec.tag] = o.sequence() + 1;
  if (o.shared_memory_) {
    shared_memory_ops_.push_back(op);
    advance_shared_memory();
    return;
  }

  const auto* input = static_cast<const unsigned char*>(o.input_);
  switch (o.gathers_ ? Collective::all_gather : spec.collective) {
    case Collective::all_reduce:
      if (spec.quantized()) {
        start_quantized(op);
        break;
      }
      [[fallthrough]];
    case Collective::reduce_scatter: {
      for (std::uint32_t step = 0; step + 1 < n; ++step) {
        o.receives_left_ += layout.segments(reduce_scatter_chunk(rank_, step, n));
        if (spec.collective == Collective::all_reduce) {
          o.receives_left_ += layout.segments(all_gather_chunk(rank_, step, n));
        }
      }
      o.received_.assign(std::size_t{2} * (n - 1) * max_segments, 0);
      const std::uint32_t first = ring_index(std::int64_t{rank_} - 1, n);
      for (std::uint32_t segment = 0; segment < layout.segments(first); ++segment) {
        const std::uint64_t begin = layout.segment_begin(first, segment);
        const std::uint64_t length = layout.segment_length(first, segment);
        // Where the partial sum is the input's own bytes, it is sent from the input itself.
        const unsigned char* partial = input + begin * item;
        if (o.accumulator_ != spec.dtype) {
          unsigned char* widened = o.accumulator_buffer_.data() + begin * accumulator_item;
          kernels::widen(widened, partial, length, spec.dtype, spec.op);
          partial = widened;
        }
        queue_data(op, Phase::reduce_scatter, 0, segment, partial, length * accumulator_item);
      }
      break;
    }
    case Collective::all_gather: {
      for (std::uint32_t step = 0; step + 1 < n; ++step) {
        o.receives_left_ += layout.segments(all_gather_chunk(rank_, step, n));
      }
      o.received_.assign(std::size_t{2} * (n - 1) * max_segments, 0);
      unsigned char* base = o.all_gather_base();
      const std::uint64_t own = layout.chunk_begin(rank_) * item;
      std::memcpy(base + own, input, layout.chunk_length(rank_) * item);
      for (std::uint32_t segment = 0; segment < layout.segments(rank_); ++segment) {
        const std::uint64_t begin = layout.segment_begin(rank_, segment);
        queue_data(op, Phase::all_gather, 0, segment, base + begin * item,
                   layout.segment_length(rank_, segment) * item);
      }
      break;
    }
    case Collective::broadcast: {
      o.received_.assign(max_segments, 0);
      if (rank_ == spec.root) {
        if (!o.result_.empty()) std::memcpy(o.result_.data(), input, o.result_.size());
        for (std::uint32_t segment = 0; segment < max_segments; ++segment) {
          queue_data(op, Phase::broadcast, 0, segment, o.result_.data() + layout.segment_begin(0, segment) * item,
                     layout.segment_length(0, segment) * item);
        }
      } else {
        o.receives_left_ = max_segments;
      }
      break;
    }
  }
  if (o.receives_left_ == 0) on_data_done(op);

  auto early = early_.find({spec.tag, o.sequence()});
  if (early != early_.end()) {
    std::vector<EarlyFrame> frames = std::move(early->second);
    early_.erase(early);
    for (EarlyFrame& frame : frames) {
      early_bytes_ -= frame.payload.size() + kEarlyFrameOverhead;
      replay(frame);
    }
  }
  maybe_complete(op);
}

void RingEngine::replay(const EarlyFrame& frame) {
  Incoming replayed{frame.header, nullptr};
  unsigned char* target = place(replayed);
  if (!frame.payload.empty()) std::memcpy(target, frame.payload.data(), frame.payload.size());
  complete(replayed);
}

// A frame whose operation had not started when its header arrived. The operation may have
// started while its payload was being read: then it is delivered now, else kept for start().
// Its bytes were reserved against max_early_bytes when its header arrived (see place()).
void RingEngine::stash_early(EarlyFrame frame) {
  const DataHeader& h = frame.header;
  if (active_.count({h.spec.tag, h.sequence}) != 0) {
    early_bytes_ -= frame.payload.size() + kEarlyFrameOverhead;
    replay(frame);
    return;
  }
  // It started and finished without this frame: the frame was one too many.
  auto started = started_.find(h.spec.tag);
  PYCOMM_ENFORCE_TYPE(ProtocolError, started == started_.end() || h.sequence >= started->second, "rank ",
                      ring_index(std::int64_t{rank_} - 1, world_), " sent a frame for ", h.spec.describe(), " #",
                      h.sequence, ", which already finished on rank ", rank_);
  early_[{frame.header.spec.tag, frame.header.sequence}].push_back(std::move(frame));
}

void RingEngine::queue_data(const std::shared_ptr<RingOp>& op, Phase phase, std::uint32_t step,
                            std::uint32_t segment, const unsigned char* data, std::uint64_t bytes) {
  DataHeader header;
  header.phase = phase;
  header.spec = op->spec();
  header.sequence = op->sequence();
  header.step = step;
  header.segment = segment;
  header.length = static_cast<std::uint32_t>(bytes);
  queue_frame(OutFrame{encode_data_header(header), data, bytes, 0, op});
}

void RingEngine::queue_token(const std::shared_ptr<RingOp>& op, std::uint32_t hops) {
  DataHeader header;
  header.phase = Phase::barrier;
  header.spec = op->spec();
  header.sequence = op->sequence();
  header.step = hops;
  queue_frame(OutFrame{encode_data_header(header), nullptr, 0, 0, op});
}

void RingEngine::queue_frame(OutFrame frame) {
  // No connection is chosen yet: write_available() gives each frame to a connection that has room
  // for it when its turn comes, so the frames of one operation spread over the pool in proportion
  // to how fast each connection drains, also when one slows down (a loss halves its window) after
  // the frames were queued.
  frame.op->sends_queued_++;
  pending_.push_back(std::move(frame));
}

unsigned char* RingEngine::place(Incoming& in) {
  const DataHeader& h = in.header;
  const std::uint32_t prev = ring_index(std::int64_t{rank_} - 1, world_);
  auto found = active_.find({h.spec.tag, h.sequence});
  if (found == active_.end()) {
    auto started = started_.find(h.spec.tag);
    const std::uint64_t started_count = started == started_.end() ? 0 : started->second;
    PYCOMM_ENFORCE_TYPE(ProtocolError, h.sequence >= started_count, "rank ", prev, " sent a frame for ",
                        h.spec.describe(), " #", h.sequence, ", which already finished on rank ", rank_);
    PYCOMM_ENFORCE_TYPE(ProtocolError, early_bytes_ + h.length + kEarlyFrameOverhead <= options_.max_early_bytes,
                        "rank ", prev,
                        " sent more than ", options_.max_early_bytes, " bytes for operations rank ", rank_,
                        " has not started (the first is ", h.spec.describe(), ")");
    // Reserved now, before the payload buffer exists: with a pool of connections several early
    // payloads are read at once, and each must count while it is read.
    early_bytes_ += h.length + kEarlyFrameOverhead;
    in.op = nullptr;
    return nullptr;
  }
  in.op = found->second;
  RingOp& op = *in.op;
  PYCOMM_ENFORCE_TYPE(ProtocolError, op.spec().same_operation(h.spec), "peers disagree about an operation: rank ",
                      rank_, " runs ", op.spec().describe(), " while rank ", prev, " runs ", h.spec.describe());
  PYCOMM_ENFORCE_TYPE(ProtocolError, has_phase(h.spec.collective, h.phase), "rank ", prev, " sent a ",
                      static_cast<int>(h.phase), " frame, which ", h.spec.describe(), " does not have");
  if (h.phase == Phase::barrier) {
    // One token from every other peer: each has travelled a different number of hops.
    PYCOMM_ENFORCE_TYPE(ProtocolError, h.length == 0 && h.step >= 1 && h.step < world_, "rank ", prev,
                        " sent an invalid barrier frame for ", h.spec.describe());
    op.tokens_seen_.resize(world_, 0);
    PYCOMM_ENFORCE_TYPE(ProtocolError, op.tokens_seen_[h.step] == 0, "rank ", prev, " sent the barrier token of ",
                        h.step, " hop(s) for ", h.spec.describe(), " twice");
    op.tokens_seen_[h.step] = 1;
    return nullptr;
  }
  const ChunkLayout& layout = op.layout_;
  const std::uint32_t max_segments = layout.segments(0);
  std::uint32_t chunk = 0;
  std::size_t index = h.segment;
  std::size_t item = dtype_size(op.spec().dtype);
  unsigned char* base = op.result_.data();
  if (h.phase == Phase::broadcast) {
    PYCOMM_ENFORCE_TYPE(ProtocolError, h.step == 0 && rank_ != op.spec().root, "rank ", prev,
                        " sent broadcast data to its root");
  } else {
    PYCOMM_ENFORCE_TYPE(ProtocolError, h.step < world_ - 1, "rank ", prev, " sent step ", h.step, " of ",
                        h.spec.describe(), " on a ring of ", world_);
    if (h.phase == Phase::reduce_scatter) {
      chunk = reduce_scatter_chunk(rank_, h.step, world_);
      item = dtype_size(op.accumulator_);
      base = op.accumulator_buffer_.data();
    } else {
      chunk = all_gather_chunk(rank_, h.step, world_);
      base = op.all_gather_base();
      index += std::size_t{world_ - 1} * max_segments;
    }
    index += std::size_t{h.step} * max_segments;
  }
  PYCOMM_ENFORCE_TYPE(ProtocolError, h.segment < layout.segments(chunk), "rank ", prev, " sent segment ",
                      h.segment, " of a chunk with ", layout.segments(chunk), " segments");
  PYCOMM_ENFORCE_TYPE(ProtocolError, op.received_[index] == 0, "rank ", prev, " sent a segment of ",
                      h.spec.describe(), " twice");
  if (op.spec().quantized()) {
    unsigned char* target = place_quantized(op, h.phase, h.step, chunk, h.segment, h.length);
    op.received_[index] = 1;
    return target;
  }
  const std::uint64_t expected = layout.segment_length(chunk, h.segment) * item;
  PYCOMM_ENFORCE_TYPE(ProtocolError, h.length == expected, "rank ", prev, " sent ", h.length,
                      " bytes for a segment of ", expected, " bytes");
  // A small all-reduce only gathers (RingOp): it has no reduce-scatter buffer to receive into.
  PYCOMM_ENFORCE_TYPE(ProtocolError, !op.gathers_ || h.phase == Phase::all_gather, "rank ", prev, " sent a ",
                      static_cast<int>(h.phase), " frame for ", h.spec.describe(),
                      ", which gathers its inputs in one pass");
  op.received_[index] = 1;
  return base + layout.segment_begin(chunk, h.segment) * item;
}

void RingEngine::complete(Incoming& in) {
  std::shared_ptr<RingOp> op = std::move(in.op);
  deliver(op, in.header.phase, in.header.step, in.header.segment);
}

void RingEngine::deliver(const std::shared_ptr<RingOp>& op, Phase phase, std::uint32_t step, std::uint32_t segment) {
  RingOp& o = *op;
  const OpSpec& spec = o.spec();
  const ChunkLayout& layout = o.layout_;
  const std::uint32_t n = world_;
  const std::size_t item = dtype_size(spec.dtype);
  if (spec.quantized() && phase != Phase::barrier) {
    deliver_quantized(op, phase, step, segment);
    if (o.receives_left_ == 0 && !o.data_done_) on_data_done(op);
    maybe_complete(op);
    return;
  }
  switch (phase) {
    case Phase::reduce_scatter: {
      const std::uint32_t chunk = reduce_scatter_chunk(rank_, step, n);
      const std::uint64_t begin = layout.segment_begin(chunk, segment);
      const std::uint64_t length = layout.segment_length(chunk, segment);
      const std::size_t accumulator_item = dtype_size(o.accumulator_);
      unsigned char* partial = o.accumulator_buffer_.data() + begin * accumulator_item;
      kernels::accumulate(partial, static_cast<const unsigned char*>(o.input_) + begin * item, length, spec.dtype,
                          spec.op);
      if (step + 2 < n) {
        queue_data(op, Phase::reduce_scatter, step + 1, segment, partial, length * accumulator_item);
      } else {
        const std::uint64_t placed = spec.collective == Collective::all_reduce ? begin : begin - layout.chunk_begin(chunk);
        unsigned char* out = o.result_.data() + placed * item;
        kernels::finalize(out, partial, length, spec.dtype, spec.op, n);
        if (spec.collective == Collective::all_reduce) {
          queue_data(op, Phase::all_gather, 0, segment, out, length * item);
        }
      }
      o.receives_left_--;
      break;
    }
    case Phase::all_gather: {
      const std::uint32_t chunk = all_gather_chunk(rank_, step, n);
      const std::uint64_t begin = layout.segment_begin(chunk, segment);
      if (step + 2 < n) {
        queue_data(op, Phase::all_gather, step + 1, segment, o.all_gather_base() + begin * item,
                   layout.segment_length(chunk, segment) * item);
      }
      o.receives_left_--;
      if (o.receives_left_ == 0 && o.gathers_) reduce_gathered(o);
      break;
    }
    case Phase::broadcast: {
      if ((rank_ + 1) % n != spec.root) {
        queue_data(op, Phase::broadcast, 0, segment, o.result_.data() + layout.segment_begin(0, segment) * item,
                   layout.segment_length(0, segment) * item);
      }
      o.receives_left_--;
      break;
    }
    case Phase::barrier: {
      o.tokens_received_++;
      if (step + 1 < n) {
        if (o.data_done_) {
          queue_token(op, step + 1);
        } else {
          o.held_tokens_.push_back(step + 1);
        }
      }
      break;
    }
  }
  if (o.receives_left_ == 0 && !o.data_done_) on_data_done(op);
  maybe_complete(op);
}

// The last input of a small all-reduce arrived: every peer reduces the same inputs in rank order.
void RingEngine::reduce_gathered(RingOp& op) {
  const OpSpec& spec = op.spec();
  const std::size_t bytes = spec.count * dtype_size(spec.dtype);
  std::vector<const void*> inputs(world_);
  for (std::uint32_t r = 0; r < world_; ++r) inputs[r] = op.gathered_.data() + r * bytes;
  kernels::reduce(op.result_.data(), inputs.data(), world_, spec.count, spec.dtype, spec.op);
}

void RingEngine::on_data_done(const std::shared_ptr<RingOp>& op) {
  op->data_done_ = true;
  op->mark_has_result();
  queue_token(op, 1);
  for (std::uint32_t hops : op->held_tokens_) queue_token(op, hops);
  op->held_tokens_.clear();
}

void RingEngine::maybe_complete(const std::shared_ptr<RingOp>& op) {
  if (!op->data_done_ || op->tokens_received_ + 1 < world_ || op->sends_queued_ != 0) return;
  complete_op(op);
}

void RingEngine::complete_op(const std::shared_ptr<RingOp>& op) {
  const OpKey key{op->spec().tag, op->sequence()};
  if (active_.erase(key) == 0) return;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    tags_[op->spec().tag].completed++;
  }
  op->finish(OpStatus::completed, "");
}

// Moves every shared-memory operation on; returns true if any made progress.
bool RingEngine::advance_shared_memory() {
  bool progress = false;
  for (std::size_t i = 0; i < shared_memory_ops_.size();) {
    const std::shared_ptr<RingOp> op = shared_memory_ops_[i];
    progress |= shared_memory_->advance(*op);
    if (shared_memory_->finished(*op)) {
      shared_memory_ops_.erase(shared_memory_ops_.begin() + static_cast<std::ptrdiff_t>(i));
      {
        std::lock_guard<std::mutex> lock(mutex_);
        shared_memory_in_flight_--;
      }
      complete_op(op);
    } else {
      ++i;
    }
  }
  return progress;
}

void RingEngine::read_available(Receiving& from) {
  // Bounded per call so a fast sender cannot starve the writes to the next peer.
  std::uint64_t budget = std::uint64_t{16} << 20;
  const std::uint32_t prev = ring_index(std::int64_t{rank_} - 1, world_);
  while (budget > 0) {
    unsigned char* target;
    std::size_t want;
    const bool in_header = from.header_filled < kDataHeaderBytes;
    if (in_header) {
      target = from.header.data() + from.header_filled;
      want = kDataHeaderBytes - from.header_filled;
    } else {
      target = from.payload_target;
      want = static_cast<std::size_t>(std::min<std::uint64_t>(from.payload_left, budget));
    }
    const ssize_t got = ::recv(from.socket.fd(), target, want, 0);
    if (got == 0) {
      PYCOMM_THROW(IoError, "the previous peer (rank ", prev, ") closed its connection");
    }
    if (got < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno == EINTR) continue;
      PYCOMM_THROW(IoError, "the connection from the previous peer (rank ", prev,
                   ") failed: ", std::strerror(errno));
    }
    const auto received = static_cast<std::uint64_t>(got);
    bytes_received_ += received;
    budget -= std::min(budget, received);
    Incoming& incoming = *from.incoming;
    if (in_header) {
      from.header_filled += received;
      if (from.header_filled < kDataHeaderBytes) continue;
      incoming.header = decode_data_header(from.header.data());
      from.payload_left = incoming.header.length;
      from.payload_target = place(incoming);
      if (!incoming.op) {
        from.early_payload.assign(from.payload_left, 0);
        from.payload_target = from.early_payload.data();
      }
    } else {
      from.payload_target += received;
      from.payload_left -= received;
    }
    if (from.payload_left == 0) {
      from.header_filled = 0;
      if (incoming.op) {
        complete(incoming);
      } else {
        stash_early(EarlyFrame{incoming.header, std::move(from.early_payload)});
        from.early_payload.clear();
      }
      write_available();
    }
  }
}

void RingEngine::write_available() {
  const std::size_t count = outgoing_.size();
  for (std::size_t turn = 0; turn < count; ++turn) write_available(*outgoing_[(next_connection_ + turn) % count]);
  if (count != 0) next_connection_ = (next_connection_ + 1) % count;
}

void RingEngine::write_available(Outgoing& to) {
  while (true) {
    if (to.queue.empty()) {
      if (pending_.empty()) return;
      to.queue.push_back(std::move(pending_.front()));
      pending_.pop_front();
    }
    OutFrame& frame = to.queue.front();
    std::array<iovec, 2> parts{};
    int count = 0;
    if (frame.written < kDataHeaderBytes) {
      parts[count++] = {frame.header.data() + frame.written, kDataHeaderBytes - frame.written};
      if (frame.bytes > 0) parts[count++] = {const_cast<unsigned char*>(frame.data), frame.bytes};
    } else {
      const std::uint64_t done = frame.written - kDataHeaderBytes;
      parts[count++] = {const_cast<unsigned char*>(frame.data) + done, frame.bytes - done};
    }
    msghdr message{};
    message.msg_iov = parts.data();
    message.msg_iovlen = count;
    const ssize_t sent = ::sendmsg(to.socket.fd(), &message, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) {
        // A frame not begun stays free for the next connection with room.
        if (frame.written == 0) {
          pending_.push_front(std::move(frame));
          to.queue.pop_front();
        }
        return;
      }
      if (errno == EINTR) continue;
      PYCOMM_THROW(IoError, "sending to the next peer (rank ", (rank_ + 1) % world_,
                   ") failed: ", std::strerror(errno));
    }
    const auto written = static_cast<std::uint64_t>(sent);
    frame.written += written;
    to.sent += written;
    bytes_sent_ += written;
    if (frame.written < kDataHeaderBytes + frame.bytes) continue;
    std::shared_ptr<RingOp> op = std::move(frame.op);
    to.queue.pop_front();
    op->sends_queued_--;
    maybe_complete(op);
  }
}

}  // namespace pycomm::ft
