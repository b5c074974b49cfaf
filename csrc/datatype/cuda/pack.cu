// The pack and unpack kernels over a flat table (pack.h).
//
// Work is cut into items: one item is one block instance of a row, or a 4 KiB piece of one when
// blocks are larger, so a single huge block still spreads over the whole GPU. A CUDA block of 256
// threads is `lanes` threads wide and 256 / lanes items tall: the lanes of an item copy consecutive
// words, consecutive items write consecutive packed bytes, so both sides stay coalesced whether a
// block is 4 bytes (one lane an item) or kilobytes (a warp an item). The word width (16, 8, 4, 2 or
// 1 bytes) is the largest that every address the launch touches is aligned to, found from the real
// pointers and the table, never assumed. Items are visited with a grid-stride loop over 64-bit
// indices: the grid is sized to the device, not to the data.
//
// A table of one row with few dims (vectors, subarrays, faces of a cube) is passed to the kernel by
// value and its loop counts stay in registers; any other table is read from a device copy, and each
// item finds its row by binary search over the rows' first item.
#include "datatype/cuda/pack.h"

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <numeric>

#include "common/error.h"
#include "datatype/cuda/runtime.h"

namespace pycomm::datatype::cuda {
namespace {

// Fields of a prepared row (PackPlan::records_); then (count, stride) for each dim, outermost first.
enum RecordField : int { kItemBegin = 0, kPackedOffset, kOffset, kBlock, kChunks, kRecordHeader };

constexpr std::int64_t kChunkBytes = 4096;  // the most bytes of one block a single item copies
constexpr int kThreadsPerBlock = 256;
constexpr int kMaxInlineDims = 6;       // dims a one-row table may have to be passed by value
constexpr int kBlocksPerMultiprocessor = 16;

// A one-row table as kernel argument. Dims are innermost first and only those with count > 1.
struct InlineRow {
  std::int64_t packed_offset;
  std::int64_t offset;
  std::int64_t block;
  std::int64_t chunks;
  int dims;
  std::int64_t count[kMaxInlineDims];
  std::int64_t stride[kMaxInlineDims];
};

template <int kWidth>
struct WordOf;
template <>
struct WordOf<16> {
  using type = uint4;
};
template <>
struct WordOf<8> {
  using type = unsigned long long;
};
template <>
struct WordOf<4> {
  using type = unsigned int;
};
template <>
struct WordOf<2> {
  using type = unsigned short;
};
template <>
struct WordOf<1> {
  using type = unsigned char;
};

// Copies bytes [0, length) of one item, `lanes` threads side by side, four words a thread in flight
// (all loads are issued before the stores, which the compiler may not reorder across char pointers).
template <int kWidth>
__host__ __device__ __forceinline__ void copy_piece(const char* __restrict__ from, char* __restrict__ to, int length,
                                           int lane, int lanes) {
  using Word = typename WordOf<kWidth>::type;
  constexpr int kUnroll = 4;
  const int step = lanes * kWidth;
  for (int at = lane * kWidth; at < length; at += step * kUnroll) {
    Word values[kUnroll];
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int position = at + k * step;
      if (position < length) values[k] = *reinterpret_cast<const Word*>(from + position);
    }
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int position = at + k * step;
      if (position < length) *reinterpret_cast<Word*>(to + position) = values[k];
    }
  }
}

// Splits an item of a row into its block instance and the piece of that block. Index is 32-bit when
// every quotient fits, which makes the divisions several times cheaper.
template <typename Index>
__host__ __device__ __forceinline__ void split_item(std::int64_t local_item, std::int64_t chunks, std::int64_t& instance,
                                           std::int64_t& chunk) {
  if (chunks == 1) {
    instance = local_item;
    chunk = 0;
    return;
  }
  const Index quotient = static_cast<Index>(local_item) / static_cast<Index>(chunks);
  instance = static_cast<std::int64_t>(quotient);
  chunk = local_item - instance * chunks;
}

// Which items one thread visits and which lane of them it copies. The kernels fill it from the
// built-in indices; keeping the walk in __host__ __device__ functions lets a host program run it.
struct ThreadPosition {
  std::int64_t first_item;
  std::int64_t item_step;
  int lane;
  int lanes;
};

__device__ __forceinline__ ThreadPosition this_thread() {
  return {static_cast<std::int64_t>(blockIdx.x) * blockDim.y + threadIdx.y,
          static_cast<std::int64_t>(gridDim.x) * blockDim.y, static_cast<int>(threadIdx.x),
          static_cast<int>(blockDim.x)};
}

template <int kWidth, bool kToPacked>
__host__ __device__ __forceinline__ void copy_instance_piece(char* strided_base, char* packed_base,
                                                             std::int64_t strided, std::int64_t packed,
                                                             std::int64_t block, std::int64_t chunk,
                                                             const ThreadPosition& position) {
  const std::int64_t begin = chunk * kChunkBytes;
  const int length = static_cast<int>(block - begin < kChunkBytes ? block - begin : kChunkBytes);
  char* strided_piece = strided_base + strided + begin;
  char* packed_piece = packed_base + packed + begin;
  if (kToPacked) {
    copy_piece<kWidth>(strided_piece, packed_piece, length, position.lane, position.lanes);
  } else {
    copy_piece<kWidth>(packed_piece, strided_piece, length, position.lane, position.lanes);
  }
}

template <int kWidth, bool kToPacked, typename Index>
__host__ __device__ void walk_inline_row(const InlineRow& row, std::int64_t total_items, char* strided_base,
                                         char* packed_base, const ThreadPosition& position) {
  for (std::int64_t item = position.first_item; item < total_items; item += position.item_step) {
    std::int64_t instance, chunk;
    split_item<Index>(item, row.chunks, instance, chunk);
    std::int64_t strided = row.offset;
    std::int64_t remaining = instance;
#pragma unroll
    for (int d = 0; d < kMaxInlineDims; ++d) {
      if (d >= row.dims) break;
      if (d == row.dims - 1) {  // the outermost loop: what is left is its index
        strided += remaining * row.stride[d];
      } else {
        const Index quotient = static_cast<Index>(remaining) / static_cast<Index>(row.count[d]);
        strided += (remaining - static_cast<std::int64_t>(quotient) * row.count[d]) * row.stride[d];
        remaining = static_cast<std::int64_t>(quotient);
      }
    }
    copy_instance_piece<kWidth, kToPacked>(strided_base, packed_base, strided, row.packed_offset + instance * row.block,
                                           row.block, chunk, position);
  }
}

template <int kWidth, bool kToPacked, typename Index>
__host__ __device__ void walk_table_rows(const std::int64_t* __restrict__ records, std::int64_t row_count, int dims,
                                         std::int64_t total_items, char* strided_base, char* packed_base,
                                         const ThreadPosition& position) {
  const int width = kRecordHeader + 2 * dims;
  for (std::int64_t item = position.first_item; item < total_items; item += position.item_step) {
    // The row holding this item: the last whose first item is at or before it.
    std::int64_t low = 0;
    std::int64_t high = row_count - 1;
    while (low < high) {
      const std::int64_t middle = low + (high - low + 1) / 2;
      if (records[middle * width + kItemBegin] <= item) {
        low = middle;
      } else {
        high = middle - 1;
      }
    }
    const std::int64_t* record = records + low * width;
    const std::int64_t block = record[kBlock];
    std::int64_t instance, chunk;
    split_item<Index>(item - record[kItemBegin], record[kChunks], instance, chunk);
    std::int64_t strided = record[kOffset];
    std::int64_t remaining = instance;
    for (int d = dims - 1; d >= 0 && remaining != 0; --d) {  // innermost first
      const std::int64_t count = record[kRecordHeader + 2 * d];
      const std::int64_t stride = record[kRecordHeader + 2 * d + 1];
      if (count == 1) continue;
      const Index quotient = static_cast<Index>(remaining) / static_cast<Index>(count);
      strided += (remaining - static_cast<std::int64_t>(quotient) * count) * stride;
      remaining = static_cast<std::int64_t>(quotient);
    }
    copy_instance_piece<kWidth, kToPacked>(strided_base, packed_base, strided,
                                           record[kPackedOffset] + instance * block, block, chunk, position);
  }
}

template <int kWidth, bool kToPacked, typename Index>
__global__ void __launch_bounds__(kThreadsPerBlock)
    copy_inline_row(InlineRow row, std::int64_t total_items, char* strided_base, char* packed_base) {
  walk_inline_row<kWidth, kToPacked, Index>(row, total_items, strided_base, packed_base, this_thread());
}

template <int kWidth, bool kToPacked, typename Index>
__global__ void __launch_bounds__(kThreadsPerBlock)
    copy_table_rows(const std::int64_t* __restrict__ records, std::int64_t row_count, int dims,
                    std::int64_t total_items, char* strided_base, char* packed_base) {
  walk_table_rows<kWidth, kToPacked, Index>(records, row_count, dims, total_items, strided_base, packed_base,
                                            this_thread());
}

// Everything one launch needs, fixed before the kernel is picked.
struct Launch {
  dim3 grid;
  dim3 threads;
  cudaStream_t stream;
  char* strided_base;
  char* packed_base;
  std::int64_t total_items;
  bool narrow_index;
  const InlineRow* inline_row;     // set: one row passed by value
  const std::int64_t* records;     // else: the device copy of the rows
  std::int64_t row_count;
  int dims;
};

template <int kWidth, bool kToPacked, typename Index>
void launch_kernel(const Launch& launch) {
  if (launch.inline_row != nullptr) {
    copy_inline_row<kWidth, kToPacked, Index><<<launch.grid, launch.threads, 0, launch.stream>>>(
        *launch.inline_row, launch.total_items, launch.strided_base, launch.packed_base);
  } else {
    copy_table_rows<kWidth, kToPacked, Index><<<launch.grid, launch.threads, 0, launch.stream>>>(
        launch.records, launch.row_count, launch.dims, launch.total_items, launch.strided_base, launch.packed_base);
  }
}

template <int kWidth, bool kToPacked>
void launch_with_width(const Launch& launch) {
  if (launch.narrow_index) {
    launch_kernel<kWidth, kToPacked, std::uint32_t>(launch);
  } else {
    launch_kernel<kWidth, kToPacked, std::uint64_t>(launch);
  }
}

template <bool kToPacked>
void launch_direction(int width, const Launch& launch) {
  switch (width) {
    case 16:
      return launch_with_width<16, kToPacked>(launch);
    case 8:
      return launch_with_width<8, kToPacked>(launch);
    case 4:
      return launch_with_width<4, kToPacked>(launch);
    case 2:
      return launch_with_width<2, kToPacked>(launch);
    default:
      return launch_with_width<1, kToPacked>(launch);
  }
}

// The largest power of two up to 16 that divides `value` (16 for 0, which every width divides).
int power_of_two_alignment(std::uint64_t value) {
  int alignment = 1;
  while (alignment < 16 && value % (2 * alignment) == 0) alignment *= 2;
  return alignment;
}

std::int64_t checked_multiply(std::int64_t a, std::int64_t b, const char* what) {
  std::int64_t product = 0;
  PYCOMM_ENFORCE(!__builtin_mul_overflow(a, b, &product), "flat table: ", what, " overflows 64 bits");
  return product;
}

std::int64_t checked_add(std::int64_t a, std::int64_t b, const char* what) {
  std::int64_t sum = 0;
  PYCOMM_ENFORCE(!__builtin_add_overflow(a, b, &sum), "flat table: ", what, " overflows 64 bits");
  return sum;
}

int next_power_of_two(std::int64_t value) {
  int power = 1;
  while (power < value && power < kThreadsPerBlock) power *= 2;
  return power;
}

}  // namespace

PackPlan::PackPlan(const std::int64_t* table, std::int64_t rows, int dims) : rows_(rows), dims_(dims) {
  PYCOMM_ENFORCE(rows >= 0 && dims >= 0, "flat table: rows and dims must not be negative (got ", rows, ", ", dims,
                 ")");
  const int width = 3 + 2 * dims;
  // Dims with count 1 move nothing: each row keeps the others, outermost first, padded on the outer
  // side, so the kernels loop over as few dims as the busiest row needs.
  int kept_dims = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    int busy = 0;
    for (int d = 0; d < dims; ++d) busy += table[r * width + 3 + 2 * d] > 1;
    kept_dims = std::max(kept_dims, busy);
  }
  const int record_width = kRecordHeader + 2 * kept_dims;
  std::uint64_t alignment_gcd = 0;
  std::int64_t packed = 0;
  bool any_data = false;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int64_t* row = table + r * width;
    const std::int64_t packed_offset = row[0], offset = row[1], block = row[2];
    PYCOMM_ENFORCE(block >= 0, "flat table row ", r, ": negative block ", block);
    PYCOMM_ENFORCE(packed_offset == packed, "flat table row ", r, ": packed offset ", packed_offset,
                   " but the rows before it pack ", packed, " bytes (rows must be in packed order, back to back)");
    std::int64_t instances = 1;
    std::int64_t low = offset, high = offset;
    for (int d = 0; d < dims; ++d) {
      const std::int64_t count = row[3 + 2 * d], stride = row[4 + 2 * d];
      PYCOMM_ENFORCE(count >= 0, "flat table row ", r, ": negative count ", count, " in dim ", d);
      instances = checked_multiply(instances, count, "the block count of a row");
      if (count > 1) {
        const std::int64_t reach = checked_multiply(count - 1, stride, "a row's reach");
        (reach < 0 ? low : high) = checked_add(reach < 0 ? low : high, reach, "a row's reach");
        alignment_gcd = std::gcd(alignment_gcd, static_cast<std::uint64_t>(std::llabs(stride)));
        largest_count_ = std::max(largest_count_, count);
      }
    }
    const std::int64_t row_bytes = checked_multiply(instances, block, "the packed bytes of a row");
    packed = checked_add(packed, row_bytes, "the packed size");
    if (row_bytes == 0) continue;  // moves nothing: no record, no launch work
    high = checked_add(high, block, "a row's reach");
    span_begin_ = any_data ? std::min(span_begin_, low) : low;
    span_end_ = any_data ? std::max(span_end_, high) : high;
    smallest_block_ = any_data ? std::min(smallest_block_, block) : block;
    any_data = true;
    alignment_gcd = std::gcd(alignment_gcd, static_cast<std::uint64_t>(std::llabs(offset)));
    alignment_gcd = std::gcd(alignment_gcd, static_cast<std::uint64_t>(packed_offset));
    alignment_gcd = std::gcd(alignment_gcd, static_cast<std::uint64_t>(block));

    const std::int64_t chunks = (block + kChunkBytes - 1) / kChunkBytes;
    records_.resize(records_.size() + record_width);
    std::int64_t* record = records_.data() + records_.size() - record_width;
    record[kItemBegin] = total_items_;
    record[kPackedOffset] = packed_offset;
    record[kOffset] = offset;
    record[kBlock] = block;
    record[kChunks] = chunks;
    int slot = kept_dims;  // fill from the innermost slot outwards; what is left is padding
    for (int d = dims - 1; d >= 0; --d) {
      if (row[3 + 2 * d] <= 1) continue;
      --slot;
      record[kRecordHeader + 2 * slot] = row[3 + 2 * d];
      record[kRecordHeader + 2 * slot + 1] = row[4 + 2 * d];
    }
    for (--slot; slot >= 0; --slot) {
      record[kRecordHeader + 2 * slot] = 1;
      record[kRecordHeader + 2 * slot + 1] = 0;
    }
    total_items_ = checked_add(total_items_, checked_multiply(instances, chunks, "the work items"), "the work items");
    largest_count_ = std::max(largest_count_, chunks);
  }
  packed_bytes_ = packed;
  dims_ = kept_dims;
  rows_ = static_cast<std::int64_t>(records_.size()) / record_width;
  table_alignment_ = power_of_two_alignment(alignment_gcd);
  mean_block_ = total_items_ > 0 ? static_cast<double>(packed_bytes_) / static_cast<double>(total_items_) : 0.0;
}

PackPlan::~PackPlan() {
  // Errors are ignored here: at interpreter exit the runtime may already be unloading.
  for (const auto& [device, pointer] : device_copies_) {
    int previous = 0;
    if (cudaGetDevice(&previous) != cudaSuccess) break;
    cudaSetDevice(device);
    cudaFree(pointer);
    cudaSetDevice(previous);
  }
}

int PackPlan::vector_width(std::uintptr_t origin, std::uintptr_t packed) const {
  int width = table_alignment_;
  width = std::min(width, power_of_two_alignment(origin));
  width = std::min(width, power_of_two_alignment(packed));
  return width;
}

const std::int64_t* PackPlan::device_records(int device) const {
  std::lock_guard<std::mutex> lock(mutex_);
  auto found = device_copies_.find(device);
  if (found != device_copies_.end()) return static_cast<const std::int64_t*>(found->second);
  const std::size_t bytes = records_.size() * sizeof(std::int64_t);
  void* copy = nullptr;
  check_cuda(cudaMalloc(&copy, bytes), "allocating the device copy of a datatype table");
  // Synchronous on purpose: the copy is made once per plan and device, and must be complete before
  // any stream, not only the caller's, launches with it.
  const cudaError_t error = cudaMemcpy(copy, records_.data(), bytes, cudaMemcpyHostToDevice);
  if (error != cudaSuccess) {
    cudaFree(copy);
    check_cuda(error, "uploading a datatype table");
  }
  device_copies_.emplace(device, copy);
  return static_cast<const std::int64_t*>(copy);
}

void PackPlan::pack(const void* origin, void* packed, std::uintptr_t stream) const {
  if (packed_bytes_ == 0) return;
  // The first byte touched is inside the caller's buffer (the origin itself may not be).
  const DevicePointer data = locate_pointer(static_cast<const char*>(origin) + span_begin_, "the data buffer");
  const DevicePointer out = locate_pointer(packed, "the packed buffer");
  PYCOMM_ENFORCE(!(data.device_memory && out.device_memory && data.device != out.device),
                 "the data buffer is on GPU ", data.device, " and the packed buffer on GPU ", out.device,
                 "; both must be on the same device");
  const int device = data.device_memory ? data.device : out.device;
  launch(data.address - span_begin_, out.address, device, true, stream);
}

void PackPlan::unpack(const void* packed, void* origin, std::uintptr_t stream) const {
  if (packed_bytes_ == 0) return;
  const DevicePointer data = locate_pointer(static_cast<const char*>(origin) + span_begin_, "the data buffer");
  const DevicePointer in = locate_pointer(packed, "the packed buffer");
  PYCOMM_ENFORCE(!(data.device_memory && in.device_memory && data.device != in.device),
                 "the data buffer is on GPU ", data.device, " and the packed buffer on GPU ", in.device,
                 "; both must be on the same device");
  const int device = data.device_memory ? data.device : in.device;
  launch(data.address - span_begin_, in.address, device, false, stream);
}

void PackPlan::launch(std::uintptr_t strided, std::uintptr_t packed, int device, bool to_packed,
                      std::uintptr_t stream) const {
  if (device < 0) check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  ScopedDevice on_device(device);

  Launch launch{};
  launch.stream = stream_from_interface(stream);
  launch.strided_base = reinterpret_cast<char*>(strided);
  launch.packed_base = reinterpret_cast<char*>(packed);
  launch.total_items = total_items_;
  launch.narrow_index = total_items_ <= std::numeric_limits<std::uint32_t>::max() &&
                        largest_count_ <= std::numeric_limits<std::uint32_t>::max();
  launch.row_count = rows_;
  launch.dims = dims_;
  InlineRow row{};
  if (rows_ == 1 && dims_ <= kMaxInlineDims) {
    row.packed_offset = records_[kPackedOffset];
    row.offset = records_[kOffset];
    row.block = records_[kBlock];
    row.chunks = records_[kChunks];
    for (int d = dims_ - 1; d >= 0; --d) {  // records are outermost first, the kernel wants innermost first
      const std::int64_t count = records_[kRecordHeader + 2 * d];
      if (count <= 1) continue;
      row.count[row.dims] = count;
      row.stride[row.dims] = records_[kRecordHeader + 2 * d + 1];
      ++row.dims;
    }
    launch.inline_row = &row;
  } else {
    launch.records = device_records(device);
  }

  const int width = vector_width(strided, packed);
  // Lanes per item: enough to cover an item's words once, at most a warp.
  const double words_per_item = mean_block_ / width;
  const int lanes = std::min(32, next_power_of_two(static_cast<std::int64_t>(words_per_item + 0.999)));
  const int items_per_block = kThreadsPerBlock / lanes;
  launch.threads = dim3(lanes, items_per_block);
  int multiprocessors = 0;
  check_cuda(cudaDeviceGetAttribute(&multiprocessors, cudaDevAttrMultiProcessorCount, device),
             "querying the multiprocessor count");
  const std::int64_t wanted = (total_items_ + items_per_block - 1) / items_per_block;
  const std::int64_t cap = static_cast<std::int64_t>(std::max(multiprocessors, 1)) * kBlocksPerMultiprocessor;
  launch.grid = dim3(static_cast<unsigned>(std::max<std::int64_t>(1, std::min(wanted, cap))));

  if (to_packed) {
    launch_direction<true>(width, launch);
  } else {
    launch_direction<false>(width, launch);
  }
  check_cuda(cudaGetLastError(), to_packed ? "launching the GPU pack kernel" : "launching the GPU unpack kernel");
}

}  // namespace pycomm::datatype::cuda
