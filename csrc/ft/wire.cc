#include "ft/wire.h"

#include "common/error.h"
#include "common/little_endian.h"

namespace pycomm::ft {
DataHeaderBytes encode_data_header(const DataHeader& header) {
  DataHeaderBytes out{};
  put_little_endian<std::uint32_t>(out.data(), kDataMagic);
  out[4] = static_cast<unsigned char>(header.phase);
  out[5] = static_cast<unsigned char>(header.spec.collective);
  out[6] = static_cast<unsigned char>(header.spec.dtype);
  out[7] = static_cast<unsigned char>(header.spec.op);
  const bool all_reduce = header.spec.collective == Collective::all_reduce;
  put_little_endian<std::uint32_t>(out.data() + 8, all_reduce ? static_cast<std::uint32_t>(header.spec.quantization)
                                                              : header.spec.root);
  put_little_endian<std::uint32_t>(out.data() + 12, header.step);
  put_little_endian<std::uint64_t>(out.data() + 16, header.spec.tag);
  put_little_endian<std::uint64_t>(out.data() + 24, header.sequence);
  put_little_endian<std::uint64_t>(out.data() + 32, header.spec.count);
  put_little_endian<std::uint32_t>(out.data() + 40, header.segment);
  put_little_endian<std::uint32_t>(out.data() + 44, header.length);
  return out;
}

DataHeader decode_data_header(const unsigned char* bytes) {
  const auto magic = get_little_endian<std::uint32_t>(bytes);
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
  const auto root = get_little_endian<std::uint32_t>(bytes + 8);
  if (header.spec.collective == Collective::all_reduce) {
    PYCOMM_ENFORCE_TYPE(ProtocolError, root < kWireQuantizationCount, "data frame with unknown wire quantization ",
                        root);
    header.spec.quantization = static_cast<WireQuantization>(root);
  } else {
    header.spec.root = root;
  }
  header.step = get_little_endian<std::uint32_t>(bytes + 12);
  header.spec.tag = get_little_endian<std::uint64_t>(bytes + 16);
  header.sequence = get_little_endian<std::uint64_t>(bytes + 24);
  header.spec.count = get_little_endian<std::uint64_t>(bytes + 32);
  header.segment = get_little_endian<std::uint32_t>(bytes + 40);
  header.length = get_little_endian<std::uint32_t>(bytes + 44);
  PYCOMM_ENFORCE_TYPE(ProtocolError, header.length <= kMaxSegmentBytes, "data frame of ", header.length,
                      " bytes; the limit is ", kMaxSegmentBytes);
  return header;
}

}  // namespace pycomm::ft
