// GPU pack and unpack of MPI datatypes, driven by the flat table of a type (see
// Type::flat_table in the bindings and flatten_layout in datatype/layout.h): one int64 row per strided
// block, [packed_offset, offset, block, count_0, stride_0, ..., count_{D-1}, stride_{D-1}], rows in
// packed order, dims outermost first, strides in bytes (zero and negative allowed). The `count`
// objects of a send are already loops of the table, so one launch moves all of them.
//
// A PackPlan checks a table once, works out what the kernels need from it (the bytes it touches, the
// alignment it guarantees, how much work each row holds) and keeps one device copy of it per device;
// callers keep the plan for as long as they send that (type, count). pack/unpack only enqueue work
// on the caller's stream and return: errors of the kernel itself surface at the next synchronisation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

namespace pycomm::datatype::cuda {

class PackPlan {
 public:
  // `table` holds rows * (3 + 2 * dims) int64 values. Throws InvalidArgument for a table that is not
  // one (negative counts or blocks, packed offsets that do not follow each other).
  PackPlan(const std::int64_t* table, std::int64_t rows, int dims);
  ~PackPlan();
  PackPlan(const PackPlan&) = delete;
  PackPlan& operator=(const PackPlan&) = delete;

  std::int64_t rows() const { return rows_; }
  int dims() const { return dims_; }
  std::int64_t packed_bytes() const { return packed_bytes_; }
  // Byte range [span_begin, span_end) relative to the origin that the table reads or writes.
  std::int64_t span_begin() const { return span_begin_; }
  std::int64_t span_end() const { return span_end_; }
  // The smallest block of the table (0 when it moves nothing): what the send-method model keys on.
  std::int64_t smallest_block() const { return smallest_block_; }
  // The largest power of two up to 16 dividing every offset, stride, block and packed offset.
  int table_alignment() const { return table_alignment_; }
  // The access width the kernels use for these two addresses: table_alignment reduced to what both
  // addresses are aligned to.
  int vector_width(std::uintptr_t origin, std::uintptr_t packed) const;

  // Gathers the data at `origin` into the packed buffer; `origin` and `packed` are device, managed
  // or mapped pinned host memory of one device. Enqueued on `stream` (the encoding of
  // __cuda_array_interface__: 0 or 1 legacy default stream, 2 per-thread default stream).
  void pack(const void* origin, void* packed, std::uintptr_t stream) const;
  // Scatters the packed buffer back to the data at `origin`.
  void unpack(const void* packed, void* origin, std::uintptr_t stream) const;

 private:
  void launch(std::uintptr_t strided, std::uintptr_t packed, int device, bool to_packed,
              std::uintptr_t stream) const;
  const std::int64_t* device_records(int device) const;

  std::int64_t rows_ = 0;
  int dims_ = 0;
  std::int64_t packed_bytes_ = 0;
  std::int64_t span_begin_ = 0;
  std::int64_t span_end_ = 0;
  std::int64_t smallest_block_ = 0;
  std::int64_t total_items_ = 0;
  std::int64_t largest_count_ = 0;  // the largest value an index division sees
  int table_alignment_ = 16;
  double mean_block_ = 0;
  // The rows as the kernels read them (see pack.cu: RecordField).
  std::vector<std::int64_t> records_;
  mutable std::mutex mutex_;  // guards device_copies_
  mutable std::map<int, void*> device_copies_;
};

}  // namespace pycomm::datatype::cuda
