#include "netem/control.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <sstream>

#include "common/error.h"
#include "netem/relay.h"

namespace pycomm::netem {
namespace {

// Long enough for any command; a longer line is a client bug, answered with an error.
constexpr std::size_t kMaxLineBytes = 4096;

LinkSettings parse_link_settings(std::istringstream& words, std::size_t& source, std::size_t& destination) {
  LinkSettings settings;
  words >> source >> destination >> settings.delay_ns >> settings.loss >> settings.queue_bytes;
  std::string extra;
  PYCOMM_ENFORCE(words && !(words >> extra),
                 "usage: link SOURCE DESTINATION DELAY_NS LOSS QUEUE_BYTES (integers, LOSS a probability)");
  return settings;
}

}  // namespace

ControlChannel::ControlChannel(int input, int output) : input_(input), output_(output) {
  const int flags = fcntl(input_, F_GETFL, 0);
  if (flags < 0 || fcntl(input_, F_SETFL, flags | O_NONBLOCK) < 0) {
    PYCOMM_THROW(IoError, "fcntl(O_NONBLOCK) on the control stream: ", std::strerror(errno));
  }
}

bool ControlChannel::serve(Relay& relay) {
  char chunk[kMaxLineBytes];
  for (;;) {
    const ssize_t got = read(input_, chunk, sizeof chunk);
    if (got == 0) return false;
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) break;
      PYCOMM_THROW(IoError, "read(control stream): ", std::strerror(errno));
    }
    pending_.append(chunk, static_cast<std::size_t>(got));
  }
  std::size_t line_end;
  while (!quit_ && (line_end = pending_.find('\n')) != std::string::npos) {
    const std::string line = pending_.substr(0, line_end);
    pending_.erase(0, line_end + 1);
    reply(execute(relay, line));
  }
  if (pending_.size() > kMaxLineBytes) {
    pending_.clear();
    reply("error command longer than " + std::to_string(kMaxLineBytes) + " bytes");
  }
  return !quit_;
}

std::string ControlChannel::execute(Relay& relay, const std::string& line) {
  std::istringstream words(line);
  std::string command;
  words >> command;
  try {
    if (command == "link") {
      std::size_t source = 0;
      std::size_t destination = 0;
      const LinkSettings settings = parse_link_settings(words, source, destination);
      relay.set_link(source, destination, settings);
      return "ok";
    }
    if (command == "stats") return stats_json(relay);
    if (command == "quit") {
      quit_ = true;
      return "ok";
    }
    return "error unknown command '" + command + "' (known: link, stats, quit)";
  } catch (const Error& error) {
    return std::string("error ") + error.what();
  }
}

void ControlChannel::reply(const std::string& text) const {
  const std::string line = text + "\n";
  std::size_t written = 0;
  while (written < line.size()) {
    const ssize_t sent = write(output_, line.data() + written, line.size() - written);
    if (sent < 0) {
      if (errno == EINTR) continue;
      PYCOMM_THROW(IoError, "write(control stream): ", std::strerror(errno));
    }
    written += static_cast<std::size_t>(sent);
  }
}

std::string stats_json(const Relay& relay) {
  std::ostringstream json;
  const RelayCounters totals = relay.counters();
  json << "{\"received_frames\": " << totals.received_frames
       << ", \"received_packets\": " << totals.received_packets << ", \"unroutable\": " << totals.unroutable
       << ", \"links\": [";
  const char* separator = "";
  for (std::size_t source = 0; source < relay.peer_count(); ++source) {
    for (std::size_t destination = 0; destination < relay.peer_count(); ++destination) {
      if (source == destination) continue;
      const LinkCounters counters = relay.link_counters(source, destination);
      json << separator << "{\"source\": " << source << ", \"destination\": " << destination
           << ", \"forwarded_packets\": " << counters.forwarded_packets
           << ", \"forwarded_bytes\": " << counters.forwarded_bytes
           << ", \"dropped_loss\": " << counters.dropped_loss
           << ", \"dropped_queue_full\": " << counters.dropped_queue_full
           << ", \"dropped_write\": " << counters.dropped_write
           << ", \"queued_packets\": " << relay.link_queued_packets(source, destination) << "}";
      separator = ", ";
    }
  }
  json << "]}";
  return json.str();
}

}  // namespace pycomm::netem
