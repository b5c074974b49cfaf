#include "ft/wire.h"

#include "common/error.h"

namespace pycomm::ft {
namespace {

template <typename T>
void put(unsigned char* out, T value) {
  for (std::size_t i = 0; i < sizeof(T); ++i) out[i] = static_cast<unsigned char>(value >> (8 * i));
}

template <typename T>
T get(const unsigned char* in) {
  T value = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) value |= static_cast<T>(static_cast<T>(in[i]) << (8 * i));
  return value;
}

}  // namespace

DataHeaderBytes encode_data_header(const DataHeader& header) {
  DataHeaderBytes out{};
  put<std::uint32_t>(out.data(), kDataMagic);
  out[4] = static_cast<unsigned char>(header.phase);
  out[5] = static_cast<unsigned char>(header.spec.collective);
  out[6] = static_cast<unsigned char>(header.spec.dtype);
  out[7] = static_cast<unsigned char>(header.spec.op);
  put<std::uint32_t>(out.data() + 8, header.spec.root);
  put<std::uint32_t>(out.data() + 12, header.step);
  put<std::uint64_t>(out.data() + 16, header.spec.tag);
  put<std::uint64_t>(out.data() + 24, header.sequence);
  put<std::uint64_t>(out.data() + 32, header.spec.count);
  put<std::uint32_t>(out.data() + 40, header.segment);
  put<std::uint32_t>(out.data() + 44, header.length);
  return out;
}

DataHeader decode_data_header(const unsigned char* bytes) {
  const auto magic = get<std::uint32_t>(bytes);
  PYCOMM_ENFORCE_TYPE(ProtocolError, magic == kDataMagic, "data frame with bad magic 0x", std::hex, magic);
  PYCOMM_ENFORCE_TYPE(ProtocolError, bytes[4] >= 1 && bytes[4] <= 4, "data frame with unknown phase ",
                      int{bytes[4]});
  PYCOMM_ENFORCE_TYPE(ProtocolError, bytes[5] >= 1 && bytes[5] <= 4, "data frame with unknown collective ",
                      int{bytes[5]});
  PYCOMM_ENFORCE_TYPE(ProtocolError, bytes[6] < kDTypeCount, "data frame with unknown dtype ", int{bytes[6]});
  PYCOMM_ENFORCE_TYPE(ProtocolError, bytes[7] <= 4, "data frame with unknown reduce op ", int{bytes[7]});
  DataHeader header;
  header.phase = static_cast<Phase>(bytes[4]);
  header.spec.collective = static_cast<Collective>(bytes[5]);
  header.spec.dtype = static_cast<DType>(bytes[6]);
  header.spec.op = static_cast<kernels::ReduceOp>(bytes[7]);
  header.spec.root = get<std::uint32_t>(bytes + 8);
  header.step = get<std::uint32_t>(bytes + 12);
  header.spec.tag = get<std::uint64_t>(bytes + 16);
  header.sequence = get<std::uint64_t>(bytes + 24);
  header.spec.count = get<std::uint64_t>(bytes + 32);
  header.segment = get<std::uint32_t>(bytes + 40);
  header.length = get<std::uint32_t>(bytes + 44);
  PYCOMM_ENFORCE_TYPE(ProtocolError, header.length <= kMaxSegmentBytes, "data frame of ", header.length,
                      " bytes; the limit is ", kMaxSegmentBytes);
  return header;
}

}  // namespace pycomm::ft
