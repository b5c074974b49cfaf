// The relay's control stream: one command a line in, one reply a line out. The Python side
// (pycomm/testing/netem.py) is the only client, and owns the relay through it: when the stream
// ends (the owner closed it, or died), the relay stops and its TUN devices vanish.
//
//   link SOURCE DESTINATION DELAY_NS LOSS QUEUE_BYTES   ->  ok
//   stats                                               ->  {"received_frames": ..., "links": [...]}
//   quit                                                ->  ok (then the relay stops)
//
// A command that cannot be carried out is answered `error MESSAGE` and changes nothing.
#pragma once

#include <string>

namespace pycomm::netem {

class Relay;

class ControlChannel {
 public:
  // Reads commands from `input` (made non-blocking) and writes replies to `output`.
  ControlChannel(int input, int output);

  int fd() const { return input_; }
  // Executes every complete command that has arrived; false once the stream ended or said quit.
  bool serve(Relay& relay);

 private:
  std::string execute(Relay& relay, const std::string& line);
  void reply(const std::string& text) const;

  int input_;
  int output_;
  bool quit_ = false;
  std::string pending_;  // the start of a command whose end has not arrived yet
};

// The relay's counters as one line of JSON.
std::string stats_json(const Relay& relay);

}  // namespace pycomm::netem
