// Fixed-width integers in little-endian byte order, whatever the host's: the byte order of every
// pycomm wire format.
#pragma once

#include <cstddef>

namespace pycomm {

template <typename T>
void put_little_endian(unsigned char* out, T value) {
  for (std::size_t i = 0; i < sizeof(T); ++i) out[i] = static_cast<unsigned char>(value >> (8 * i));
}

template <typename T>
T get_little_endian(const unsigned char* in) {
  T value = 0;
  for (std::size_t i = 0; i < sizeof(T); ++i) value |= static_cast<T>(static_cast<T>(in[i]) << (8 * i));
  return value;
}

}  // namespace pycomm
