// _netem_relay: the packet relay behind pycomm.testing.netem (see relay.h), started by the Python
// side, which passes the peers on the command line and then drives it over stdin/stdout
// (control.h). It prints "ready" once every peer's TUN device exists.
//
//   _netem_relay --device NAME --seed N [--offload on|off] --peer NAMESPACE_PATH=IPV4 --peer ... (two or more)
#include <arpa/inet.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/error.h"
#include "netem/control.h"
#include "netem/relay.h"

namespace {

struct Options {
  std::string device = "wan0";
  std::uint64_t seed = 0;
  bool offload = false;
  std::vector<pycomm::netem::PeerSpec> peers;
};

pycomm::netem::PeerSpec parse_peer(const std::string& text) {
  const std::size_t equals = text.rfind('=');
  PYCOMM_ENFORCE(equals != std::string::npos && equals > 0, "--peer wants NAMESPACE_PATH=IPV4, got '", text, "'");
  in_addr address{};
  const std::string dotted = text.substr(equals + 1);
  PYCOMM_ENFORCE(inet_pton(AF_INET, dotted.c_str(), &address) == 1, "'", dotted, "' is not an IPv4 address");
  return {text.substr(0, equals), ntohl(address.s_addr)};
}

Options parse_options(int argc, char** argv) {
  Options options;
  for (int index = 1; index < argc; ++index) {
    const std::string flag = argv[index];
    PYCOMM_ENFORCE(index + 1 < argc, flag, " needs a value");
    const std::string value = argv[++index];
    if (flag == "--device") {
      options.device = value;
    } else if (flag == "--seed") {
      char* end = nullptr;
      options.seed = std::strtoull(value.c_str(), &end, 10);
      PYCOMM_ENFORCE(!value.empty() && *end == '\0', "--seed wants a non-negative integer, got '", value, "'");
    } else if (flag == "--offload") {
      PYCOMM_ENFORCE(value == "on" || value == "off", "--offload wants on or off, got '", value, "'");
      options.offload = value == "on";
    } else if (flag == "--peer") {
      options.peers.push_back(parse_peer(value));
    } else {
      PYCOMM_THROW(pycomm::InvalidArgument, "unknown option ", flag, " (known: --device, --seed, --offload, --peer)");
    }
  }
  return options;
}

}  // namespace

int main(int argc, char** argv) {
  // A closed stdout must end the relay through an error, not kill it silently mid-write.
  std::signal(SIGPIPE, SIG_IGN);
  // Deadlines are microseconds apart at 1 Gbit/s; the default 50 us timer slack would blur them.
  prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
  try {
    const Options options = parse_options(argc, argv);
    pycomm::netem::Relay relay(options.peers, options.device, options.seed, options.offload);
    pycomm::netem::ControlChannel control(STDIN_FILENO, STDOUT_FILENO);
    std::fputs("ready\n", stdout);
    std::fflush(stdout);
    relay.run(control);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "pycomm netem relay: %s\n", error.what());
    return 1;
  }
  return 0;
}
