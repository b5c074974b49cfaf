#include "netem/relay.h"

#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "netem/control.h"

namespace pycomm::netem {
namespace {

// How many packets one wakeup takes from a device before it looks at the others and at the clock:
// large enough to amortise epoll_wait, small enough that one busy sender cannot delay another's
// packets (or due deliveries) by more than a few tens of microseconds.
constexpr int kReceiveBatch = 64;
constexpr int kMaxEvents = 64;
// Larger than any packet a TUN device hands out (its MTU is at most 65535).
constexpr std::size_t kMaxPacketBytes = 65536;
// A link's queue beyond this is a mistake in the caller's arithmetic, not a plausible router.
constexpr std::size_t kMaxQueueBytes = std::size_t{1} << 30;
// epoll tags: devices are numbered from 0; these two sit above any peer index.
constexpr std::uint32_t kTimerTag = 0xffffffffu;
constexpr std::uint32_t kControlTag = 0xfffffffeu;

[[noreturn]] void fail_system(const char* what) { PYCOMM_THROW(IoError, what, ": ", std::strerror(errno)); }

// splitmix64: tiny state, good enough statistics for "drop with probability p", and a fixed
// sequence per seed on every platform (std::uniform_real_distribution is not).
class LossDraw {
 public:
  explicit LossDraw(std::uint64_t seed) : state_(seed) {}

  bool drop(double probability) {
    if (probability <= 0) return false;
    const double uniform = static_cast<double>(next() >> 11) * 0x1.0p-53;  // [0, 1)
    return uniform < probability;
  }

 private:
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  std::uint64_t state_;
};

std::uint32_t ipv4_destination(const unsigned char* packet) {
  return (std::uint32_t{packet[16]} << 24) | (std::uint32_t{packet[17]} << 16) | (std::uint32_t{packet[18]} << 8) |
         std::uint32_t{packet[19]};
}

}  // namespace

std::int64_t monotonic_now_ns() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<std::int64_t>(now.tv_sec) * 1'000'000'000 + now.tv_nsec;
}

struct Relay::Link {
  Link(const LinkSettings& link_settings, int receiver_fd, std::uint64_t seed)
      : settings(link_settings), queue(link_settings.queue_bytes), loss_draw(seed), destination_fd(receiver_fd) {}

  LinkSettings settings;
  PacketQueue queue;
  LossDraw loss_draw;
  LinkCounters counters;
  int destination_fd;
  bool busy = false;  // listed in busy_links_
};

Relay::Relay(const std::vector<PeerSpec>& peers, const std::string& device_name, std::uint64_t seed)
    : receive_buffer_(kMaxPacketBytes) {
  PYCOMM_ENFORCE(peers.size() >= 2, "the relay needs at least 2 peers, got ", peers.size());
  devices_.reserve(peers.size());
  for (const PeerSpec& peer : peers) {
    PYCOMM_ENFORCE(peer_by_address_.emplace(peer.address, devices_.size()).second,
                   "two peers were given the same address");
    devices_.emplace_back(peer.namespace_path, device_name);
  }
  const std::size_t count = peers.size();
  links_.reserve(count * count);
  for (std::size_t source = 0; source < count; ++source) {
    for (std::size_t destination = 0; destination < count; ++destination) {
      const std::uint64_t link_seed = seed ^ ((std::uint64_t{source} << 32 | destination) * 0xd1342543de82ef95ull);
      links_.push_back(std::make_unique<Link>(LinkSettings{}, devices_[destination].fd(), link_seed));
    }
  }
  busy_links_.reserve(count * count);

  epoll_fd_ = epoll_create1(EPOLL_CLOEXEC);
  if (epoll_fd_ < 0) fail_system("epoll_create1");
  timer_fd_ = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (timer_fd_ < 0) fail_system("timerfd_create");
  watch(timer_fd_, kTimerTag);
  for (std::size_t peer = 0; peer < count; ++peer) watch(devices_[peer].fd(), static_cast<std::uint32_t>(peer));
}

Relay::~Relay() {
  if (timer_fd_ >= 0) ::close(timer_fd_);
  if (epoll_fd_ >= 0) ::close(epoll_fd_);
}

void Relay::watch(int fd, std::uint32_t tag) {
  epoll_event event{};
  event.events = EPOLLIN;
  event.data.u32 = tag;
  if (epoll_ctl(epoll_fd_, EPOLL_CTL_ADD, fd, &event) != 0) fail_system("epoll_ctl");
}

std::size_t Relay::link_index(std::size_t source, std::size_t destination) const {
  PYCOMM_ENFORCE(source < peer_count() && destination < peer_count() && source != destination, "no link ", source,
                 " -> ", destination, " among ", peer_count(), " peers");
  return source * peer_count() + destination;
}

Relay::Link& Relay::link(std::size_t source, std::size_t destination) {
  return *links_[link_index(source, destination)];
}

const Relay::Link& Relay::link(std::size_t source, std::size_t destination) const {
  return *links_[link_index(source, destination)];
}

void Relay::set_link(std::size_t source, std::size_t destination, const LinkSettings& settings) {
  PYCOMM_ENFORCE(settings.delay_ns >= 0, "delay must not be negative, got ", settings.delay_ns, " ns");
  PYCOMM_ENFORCE(settings.loss >= 0 && settings.loss <= 1, "loss must be a probability in [0, 1], got ",
                 settings.loss);
  PYCOMM_ENFORCE(settings.queue_bytes >= kMaxPacketBytes && settings.queue_bytes <= kMaxQueueBytes, "queue must hold ",
                 kMaxPacketBytes, " to ", kMaxQueueBytes, " bytes, got ", settings.queue_bytes);
  Link& changed = link(source, destination);
  if (settings.queue_bytes != changed.queue.capacity_bytes()) {
    changed.counters.dropped_queue_full += changed.queue.resize(settings.queue_bytes);
  }
  changed.settings = settings;
}

const LinkSettings& Relay::link_settings(std::size_t source, std::size_t destination) const {
  return link(source, destination).settings;
}

const LinkCounters& Relay::link_counters(std::size_t source, std::size_t destination) const {
  return link(source, destination).counters;
}

std::size_t Relay::link_queued_packets(std::size_t source, std::size_t destination) const {
  return link(source, destination).queue.queued_packets();
}

void Relay::run(ControlChannel& control) {
  watch(control.fd(), kControlTag);
  epoll_event events[kMaxEvents];
  bool serving = true;
  while (serving) {
    const int ready = epoll_wait(epoll_fd_, events, kMaxEvents, -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      fail_system("epoll_wait");
    }
    for (int index = 0; index < ready; ++index) {
      const std::uint32_t tag = events[index].data.u32;
      if (tag == kTimerTag) {
        std::uint64_t expirations = 0;
        // Only clears the readiness; which packets are due is decided from the clock below.
        if (read(timer_fd_, &expirations, sizeof expirations) < 0 && errno != EAGAIN) fail_system("read(timerfd)");
        armed_deadline_ns_ = -1;
      } else if (tag == kControlTag) {
        serving = control.serve(*this);
      } else {
        receive_from(tag, monotonic_now_ns());
      }
    }
    deliver_due(monotonic_now_ns());
    arm_timer();
  }
}

void Relay::receive_from(std::size_t source, std::int64_t now_ns) {
  const int fd = devices_[source].fd();
  for (int packet = 0; packet < kReceiveBatch; ++packet) {
    const ssize_t length = read(fd, receive_buffer_.data(), receive_buffer_.size());
    if (length < 0) {
      if (errno == EAGAIN || errno == EINTR) return;
      fail_system("read(TUN device)");
    }
    ++counters_.received_packets;
    route(source, receive_buffer_.data(), static_cast<std::uint32_t>(length), now_ns);
  }
}

void Relay::route(std::size_t source, const unsigned char* packet, std::uint32_t length, std::int64_t now_ns) {
  // IPv6 neighbour discovery and the like have no place on these links; only IPv4 between peers.
  if (length < 20 || (packet[0] >> 4) != 4) {
    ++counters_.unroutable;
    return;
  }
  const auto found = peer_by_address_.find(ipv4_destination(packet));
  if (found == peer_by_address_.end() || found->second == source) {
    ++counters_.unroutable;
    return;
  }
  const std::size_t index = source * peer_count() + found->second;
  Link& onward = *links_[index];
  if (onward.loss_draw.drop(onward.settings.loss)) {
    ++onward.counters.dropped_loss;
    return;
  }
  if (!onward.queue.push(now_ns + onward.settings.delay_ns, packet, length)) {
    ++onward.counters.dropped_queue_full;
    return;
  }
  if (!onward.busy) {
    onward.busy = true;
    busy_links_.push_back(index);
  }
}

void Relay::deliver_due(std::int64_t now_ns) {
  for (std::size_t position = 0; position < busy_links_.size();) {
    Link& busy = *links_[busy_links_[position]];
    PacketQueue& queue = busy.queue;
    while (!queue.empty() && queue.head_deadline() <= now_ns) {
      const std::uint32_t length = queue.head_length();
      if (write(busy.destination_fd, queue.head_data(), length) == static_cast<ssize_t>(length)) {
        ++busy.counters.forwarded_packets;
        busy.counters.forwarded_bytes += length;
      } else {
        ++busy.counters.dropped_write;
      }
      queue.pop();
    }
    if (queue.empty()) {
      busy.busy = false;
      busy_links_[position] = busy_links_.back();
      busy_links_.pop_back();
    } else {
      ++position;
    }
  }
}

void Relay::arm_timer() {
  std::int64_t earliest = -1;
  for (const std::size_t index : busy_links_) {
    const std::int64_t deadline = links_[index]->queue.head_deadline();
    if (earliest < 0 || deadline < earliest) earliest = deadline;
  }
  if (earliest == armed_deadline_ns_) return;
  itimerspec when{};  // all zero: disarm
  if (earliest >= 0) {
    when.it_value.tv_sec = earliest / 1'000'000'000;
    when.it_value.tv_nsec = earliest % 1'000'000'000;
  }
  if (timerfd_settime(timer_fd_, TFD_TIMER_ABSTIME, &when, nullptr) != 0) fail_system("timerfd_settime");
  armed_deadline_ns_ = earliest;
}

}  // namespace pycomm::netem
