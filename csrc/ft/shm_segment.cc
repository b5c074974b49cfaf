#include "ft/shm_segment.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

#include "common/error.h"

namespace pycomm::ft {
namespace {

constexpr std::uint64_t kShmMagic = 0x314d48534d435950;  // "PYCMSHM1"

std::size_t header_bytes() { return (sizeof(ShmHeader) + 4095) / 4096 * 4096; }

}  // namespace

std::size_t ShmSegment::total_bytes() { return header_bytes() + std::size_t{kShmSlots} * kShmBufferBytes; }

unsigned char* ShmSegment::buffer(std::uint32_t slot) const {
  return reinterpret_cast<unsigned char*>(header_) + header_bytes() + std::size_t{slot} * kShmBufferBytes;
}

void ShmSegment::create(const std::string& name) {
  const int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) PYCOMM_THROW(IoError, "cannot create shared memory ", name, ": ", std::strerror(errno));
  owned_name_ = name;
  const std::size_t bytes = total_bytes();
  void* memory = MAP_FAILED;
  if (ftruncate(fd, static_cast<off_t>(bytes)) == 0) {
    memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  }
  const int error = errno;
  ::close(fd);
  if (memory == MAP_FAILED) {
    shm_unlink(name.c_str());
    owned_name_.clear();
    PYCOMM_THROW(IoError, "cannot map shared memory ", name, " (", bytes, " bytes): ", std::strerror(error));
  }
  header_ = new (memory) ShmHeader{};
  header_->slots = kShmSlots;
  header_->buffer_bytes = kShmBufferBytes;
  header_->magic.store(kShmMagic, std::memory_order_release);
}

bool ShmSegment::open(const std::string& name) {
  const int fd = shm_open(name.c_str(), O_RDWR | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  struct stat status {};
  const std::size_t bytes = total_bytes();
  void* memory = MAP_FAILED;
  if (fstat(fd, &status) == 0 && static_cast<std::size_t>(status.st_size) >= bytes) {
    memory = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  }
  ::close(fd);
  if (memory == MAP_FAILED) return false;
  auto* header = static_cast<ShmHeader*>(memory);
  if (header->magic.load(std::memory_order_acquire) != kShmMagic) {
    munmap(memory, bytes);
    return false;
  }
  PYCOMM_ENFORCE_TYPE(ProtocolError, header->slots == kShmSlots && header->buffer_bytes == kShmBufferBytes,
                      "shared memory ", name, " has another layout (", header->slots, " slots of ",
                      header->buffer_bytes, " bytes)");
  header_ = header;
  return true;
}

ShmSegment::~ShmSegment() {
  if (header_ != nullptr) munmap(header_, total_bytes());
  if (!owned_name_.empty()) shm_unlink(owned_name_.c_str());
}

}  // namespace pycomm::ft
