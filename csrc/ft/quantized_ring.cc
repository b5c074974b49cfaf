// The quantized all-reduce of the ring engine: wire quantization whose error does not grow with
// the number of peers, and identical results on every peer.
//
// Re-quantizing a partial sum at every hop (what a plain ring would do with quantized frames) adds
// one rounding per hop, so the error grows with the ring. Here every value is quantized once:
//
// - Reduce-scatter: each peer encodes each segment of its input once, as a record. At step s a
//   peer sends, for the chunk of that step, its own record followed by the s records it received
//   for that chunk, so the chunk's owner ends with every other peer's record and sums them,
//   dequantized, in float32 with its own input (exact): the owner's sum errs by the other peers'
//   input quantization only, each at most half a quantization step of its own block.
// - All-gather: the owner encodes the sum once; that record travels the ring unchanged and every
//   peer (the owner too) decodes the same bytes, so every peer holds identical values.
//
// The price: the reduce-scatter carries world (world - 1) / 2 records per chunk instead of world - 1
// partial sums. With the all-gather, int8 records of float32 data send (world / 2 + 1) / 8 of the
// unquantized bytes: a quarter at 2 peers, 5/8 at 8, as much at 14.
#include <cstring>

#include "common/error.h"
#include "ft/ring_engine.h"
#include "ft/wire_codec.h"
#include "kernels/quantize.h"

namespace pycomm::ft {
namespace {

// Encoding the first chunk takes a while (128 MiB of float32 at 2 peers: ~10 ms): the records
// already encoded are handed to the sockets after every this many, so the first leaves at once.
// Every first-step record is still queued long before any record of a later step can exist (those
// wait for the previous peer's records, a one-way delay away), so the order on the wire stays
// reduce-scatter first.
constexpr std::uint32_t kRecordsBetweenWrites = 8;

std::uint32_t ring_position(std::int64_t value, std::uint32_t world) {
  const auto n = static_cast<std::int64_t>(world);
  return static_cast<std::uint32_t>(((value % n) + n) % n);
}

}  // namespace

// Where the records of reduce-scatter step `step` for `segment` live: room for s + 2 records, this
// peer's own first, then the s + 1 received.
unsigned char* RingEngine::step_slot(const RingOp& op, std::uint32_t step, std::uint32_t segment) {
  const std::uint64_t segments = op.layout_.segments(0);
  const std::uint64_t slots = std::uint64_t{step} * (step + 3) / 2 * segments + std::uint64_t{segment} * (step + 2);
  return op.wire_steps_.data() + slots * op.wire_record_max_;
}

unsigned char* RingEngine::result_slot(const RingOp& op, std::uint32_t chunk, std::uint32_t segment) {
  const std::uint64_t segments = op.layout_.segments(0);
  return op.wire_results_.data() + (std::uint64_t{chunk} * segments + segment) * op.wire_record_max_;
}

const unsigned char* RingEngine::input_at(const RingOp& op, std::uint64_t element) {
  return static_cast<const unsigned char*>(op.input_) + element * dtype_size(op.spec().dtype);
}

void RingEngine::start_quantized(const std::shared_ptr<RingOp>& op) {
  RingOp& o = *op;
  const ChunkLayout& layout = o.layout_;
  const std::uint32_t n = world_;
  for (std::uint32_t step = 0; step + 1 < n; ++step) {
    o.receives_left_ += layout.segments(ring_position(std::int64_t{rank_} - step - 2, n));
    o.receives_left_ += layout.segments(ring_position(std::int64_t{rank_} - step - 1, n));
  }
  o.received_.assign(std::size_t{2} * (n - 1) * layout.segments(0), 0);
  const std::uint32_t first = ring_position(std::int64_t{rank_} - 1, n);
  for (std::uint32_t segment = 0; segment < layout.segments(first); ++segment) {
    const std::uint64_t length = layout.segment_length(first, segment);
    unsigned char* record = o.wire_first_.data() + std::uint64_t{segment} * o.wire_record_max_;
    encode_record(o.spec().quantization, input_at(o, layout.segment_begin(first, segment)), o.spec().dtype, length,
                  record);
    queue_data(op, Phase::reduce_scatter, 0, segment, record, wire_record_bytes(o.spec().quantization, length));
    if ((segment + 1) % kRecordsBetweenWrites == 0) write_available();
  }
}

unsigned char* RingEngine::place_quantized(RingOp& op, Phase phase, std::uint32_t step, std::uint32_t chunk,
                                           std::uint32_t segment, std::uint32_t length) {
  const std::uint64_t elements = op.layout_.segment_length(chunk, segment);
  const std::size_t record = wire_record_bytes(op.spec().quantization, elements);
  const std::uint64_t records = phase == Phase::reduce_scatter ? step + 1 : 1;
  const std::uint32_t prev = ring_position(std::int64_t{rank_} - 1, world_);
  PYCOMM_ENFORCE_TYPE(ProtocolError, length == records * record, "rank ", prev, " sent ", length,
                      " bytes for a quantized segment of ", records * record, " bytes");
  if (phase == Phase::reduce_scatter) return step_slot(op, step, segment) + record;
  return result_slot(op, chunk, segment);
}

void RingEngine::deliver_quantized(const std::shared_ptr<RingOp>& op, Phase phase, std::uint32_t step,
                                   std::uint32_t segment) {
  RingOp& o = *op;
  const OpSpec& spec = o.spec();
  const ChunkLayout& layout = o.layout_;
  const std::uint32_t n = world_;
  const std::size_t item = dtype_size(spec.dtype);
  if (phase == Phase::all_gather) {
    const std::uint32_t chunk = ring_position(std::int64_t{rank_} - step - 1, n);
    const std::uint64_t length = layout.segment_length(chunk, segment);
    const std::uint64_t begin = layout.segment_begin(chunk, segment);
    unsigned char* record = result_slot(o, chunk, segment);
    decode_record(spec.quantization, record, length, o.result_.data() + begin * item, spec.dtype);
    if (step + 2 < n) {
      queue_data(op, Phase::all_gather, step + 1, segment, record, wire_record_bytes(spec.quantization, length));
    }
    o.receives_left_--;
    return;
  }
  const std::uint32_t chunk = ring_position(std::int64_t{rank_} - step - 2, n);
  const std::uint64_t length = layout.segment_length(chunk, segment);
  const std::uint64_t begin = layout.segment_begin(chunk, segment);
  const std::size_t record_bytes = wire_record_bytes(spec.quantization, length);
  unsigned char* slot = step_slot(o, step, segment);
  if (step + 2 < n) {
    encode_record(spec.quantization, input_at(o, begin), spec.dtype, length, slot);
    queue_data(op, Phase::reduce_scatter, step + 1, segment, slot, (std::uint64_t{step} + 2) * record_bytes);
    o.receives_left_--;
    return;
  }
  // This peer owns the chunk: its input (exact up to float32: a float64 input is rounded to it),
  // plus every other peer's record, in float32.
  auto* sum = reinterpret_cast<float*>(o.wire_scratch_.data());
  float* scratch = sum + layout.segment_elements;
  if (spec.dtype == DType::f32) {
    std::memcpy(sum, input_at(o, begin), length * sizeof(float));
  } else {
    kernels::cast(sum, DType::f32, input_at(o, begin), spec.dtype, length);
  }
  for (std::uint32_t k = 0; k <= step; ++k) {
    accumulate_record(spec.quantization, slot + (k + 1) * record_bytes, length, sum, scratch);
  }
  if (spec.op == kernels::ReduceOp::avg) {
    const auto peers = static_cast<float>(n);
    for (std::uint64_t i = 0; i < length; ++i) sum[i] /= peers;
  }
  unsigned char* record = result_slot(o, chunk, segment);
  encode_record(spec.quantization, sum, DType::f32, length, record);
  decode_record(spec.quantization, record, length, o.result_.data() + begin * item, spec.dtype);
  queue_data(op, Phase::all_gather, 0, segment, record, record_bytes);
  o.receives_left_--;
}

}  // namespace pycomm::ft
