// pycomm._core.ft: the ring engine of pycomm.ft (the data plane of one epoch). The control plane
// (membership, epochs, recovery) is Python, in pycomm/ft; it hands this layer connected sockets.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "bindings/arrays.h"
#include "common/deadline.h"
#include "common/error.h"
#include "ft/ring_engine.h"
#include "ft/wire.h"

namespace py = pybind11;

namespace pycomm::bindings {
namespace {

using ft::Collective;
using ft::collective_name;
using ft::OpStatus;
using ft::RingEngine;
using ft::RingOp;

Collective collective_from_name(const std::string& name) {
  if (name == "all_reduce") return Collective::all_reduce;
  if (name == "broadcast") return Collective::broadcast;
  if (name == "all_gather") return Collective::all_gather;
  if (name == "reduce_scatter") return Collective::reduce_scatter;
  PYCOMM_THROW(InvalidArgument, "unknown collective '", name,
               "'; one of all_reduce, broadcast, all_gather, reduce_scatter");
}

const char* status_name(OpStatus status) {
  switch (status) {
    case OpStatus::running: return "running";
    case OpStatus::completed: return "completed";
    case OpStatus::failed: return "failed";
  }
  return "unknown";
}

// A steady_clock instant as seconds of time.monotonic(): both read CLOCK_MONOTONIC on Linux.
std::optional<double> monotonic_seconds(std::optional<std::chrono::steady_clock::time_point> instant) {
  if (!instant) return std::nullopt;
  return std::chrono::duration<double>(instant->time_since_epoch()).count();
}

// An operation and the array it reads: the array stays referenced while the handle lives.
struct OpHandle {
  std::shared_ptr<RingOp> op;
  py::object input;
};

}  // namespace

void bind_ft(py::module_& m) {
  m.attr("DATA_HEADER_BYTES") = ft::kDataHeaderBytes;

  // The data frame header codec, exposed for fuzzing and for tests that forge frames.
  m.def(
      "decode_data_header",
      [](const py::bytes& data) {
        const std::string bytes = data;
        PYCOMM_ENFORCE(bytes.size() == ft::kDataHeaderBytes, "a data frame header is ", ft::kDataHeaderBytes,
                       " bytes, got ", bytes.size());
        const ft::DataHeader h = ft::decode_data_header(reinterpret_cast<const unsigned char*>(bytes.data()));
        py::dict out;
        out["phase"] = static_cast<int>(h.phase);
        out["collective"] = collective_name(h.spec.collective);
        out["dtype"] = std::string(dtype_name(h.spec.dtype));
        out["op"] = std::string(kernels::reduce_op_name(h.spec.op));
        out["root"] = h.spec.root;
        out["step"] = h.step;
        out["tag"] = h.spec.tag;
        out["sequence"] = h.sequence;
        out["count"] = h.spec.count;
        out["segment"] = h.segment;
        out["length"] = h.length;
        return out;
      },
      py::arg("data"));
  m.def(
      "encode_data_header",
      [](int phase, const std::string& collective, const std::string& dtype, const std::string& op,
         std::uint32_t root, std::uint32_t step, std::uint64_t tag, std::uint64_t sequence, std::uint64_t count,
         std::uint32_t segment, std::uint32_t length) {
        PYCOMM_ENFORCE(phase >= 1 && phase <= 4, "phase must be 1..4");
        ft::DataHeader h;
        h.phase = static_cast<ft::Phase>(phase);
        h.spec.collective = collective_from_name(collective);
        h.spec.dtype = dtype_from_name(dtype);
        h.spec.op = kernels::reduce_op_from_name(op);
        // The raw field: a forged frame may carry any value (all_reduce: the wire quantization).
        if (h.spec.collective == ft::Collective::all_reduce) {
          h.spec.quantization = static_cast<ft::WireQuantization>(root);
        } else {
          h.spec.root = root;
        }
        h.step = step;
        h.spec.tag = tag;
        h.sequence = sequence;
        h.spec.count = count;
        h.segment = segment;
        h.length = length;
        const ft::DataHeaderBytes bytes = ft::encode_data_header(h);
        return py::bytes(reinterpret_cast<const char*>(bytes.data()), bytes.size());
      },
      py::arg("phase"), py::arg("collective"), py::arg("dtype"), py::arg("op"), py::arg("root"), py::arg("step"),
      py::arg("tag"), py::arg("sequence"), py::arg("count"), py::arg("segment"), py::arg("length"));

  py::class_<OpHandle>(m, "RingOp", "One operation of a RingEngine (see csrc/ft/ring_op.h).")
      .def(
          "wait",
          [](OpHandle& handle, double timeout) {
            const Deadline deadline = deadline_after(timeout);
            OpStatus status;
            {
              py::gil_scoped_release release;
              status = handle.op->wait(deadline);
            }
            return status_name(status);
          },
          py::arg("timeout"))
      .def_property_readonly("status", [](const OpHandle& handle) { return status_name(handle.op->status()); })
      .def_property_readonly("has_result", [](const OpHandle& handle) { return handle.op->has_result(); })
      .def_property_readonly("error", [](const OpHandle& handle) { return handle.op->error(); })
      .def_property_readonly(
          "held_at", [](const OpHandle& handle) { return monotonic_seconds(handle.op->held_at()); },
          "When this peer came to hold the whole result, on time.monotonic()'s clock; None before.")
      .def_property_readonly(
          "finished_at", [](const OpHandle& handle) { return monotonic_seconds(handle.op->finished_at()); },
          "When the operation completed (every peer holds the result) or failed, on time.monotonic()'s "
          "clock; None before.")
      .def_property_readonly("sequence", [](const OpHandle& handle) { return handle.op->sequence(); })
      .def_property_readonly("tag", [](const OpHandle& handle) { return handle.op->spec().tag; })
      .def_property_readonly("result_bytes", [](const OpHandle& handle) { return handle.op->result_bytes(); })
      .def("describe", [](const OpHandle& handle) { return handle.op->spec().describe(); })
      .def(
          "copy_result",
          [](const OpHandle& handle, py::array out) {
            const py::buffer_info info = out.request(true);
            const ArrayView view = view_bytes(info, "out");
            PYCOMM_ENFORCE(view.bytes == handle.op->result_bytes(), "out has ", view.bytes, " bytes, the result ",
                           handle.op->result_bytes());
            py::gil_scoped_release release;
            handle.op->copy_result(view.data);
          },
          py::arg("out"))
      .def(
          "restore_input",
          [](const OpHandle& handle) {
            py::gil_scoped_release release;
            handle.op->restore_input();
          },
          "After a failure: puts the input back into a buffer the operation wrote results into.");

  py::class_<RingEngine>(m, "RingEngine", "The data plane of one epoch (see csrc/ft/ring_engine.h).")
      .def(py::init([](const std::vector<int>& next_fds, const std::vector<int>& prev_fds, std::uint32_t rank,
                       std::uint32_t world, std::uint64_t segment_bytes, std::uint64_t max_early_bytes,
                       std::uint32_t spin_microseconds, std::vector<std::string> shared_memory_names) {
             ft::EngineOptions options;
             options.segment_bytes = segment_bytes;
             options.max_early_bytes = max_early_bytes;
             options.spin_microseconds = spin_microseconds;
             options.shared_memory_names = std::move(shared_memory_names);
             std::vector<transport::Socket> to_next;
             std::vector<transport::Socket> from_prev;
             for (int fd : next_fds) to_next.emplace_back(fd);
             for (int fd : prev_fds) from_prev.emplace_back(fd);
             return std::make_unique<RingEngine>(std::move(to_next), std::move(from_prev), rank, world, options);
           }),
           py::arg("next_fds"), py::arg("prev_fds"), py::arg("rank"), py::arg("world"),
           py::arg("segment_bytes") = ft::EngineOptions{}.segment_bytes,
           py::arg("max_early_bytes") = ft::EngineOptions{}.max_early_bytes,
           py::arg("spin_microseconds") = ft::EngineOptions{}.spin_microseconds,
           py::arg("shared_memory_names") = std::vector<std::string>{},
           "Takes ownership of every file descriptor: the pool of connections to the next peer and the one "
           "from the previous peer (both empty for a ring of one).")
      .def(
          "submit",
          [](RingEngine& engine, const std::string& collective, py::array input, const std::string& dtype,
             const std::string& op, std::uint64_t count, std::uint32_t root, std::uint64_t tag,
             const std::string& quantization) {
            ft::OpSpec spec;
            spec.collective = collective_from_name(collective);
            spec.dtype = dtype_from_name(dtype);
            spec.op = kernels::reduce_op_from_name(op);
            spec.count = count;
            spec.root = root;
            spec.tag = tag;
            spec.quantization = ft::wire_quantization_from_name(quantization);
            PYCOMM_ENFORCE(!spec.quantized() || (spec.collective == ft::Collective::all_reduce &&
                                                  (spec.op == kernels::ReduceOp::sum || spec.op == kernels::ReduceOp::avg) &&
                                                  is_floating(spec.dtype)),
                           "wire quantization takes an all_reduce with op sum or avg of a float dtype");
            PYCOMM_ENFORCE(root < engine.world(), "root ", root, " is not a rank of a group of ", engine.world());
            const ArrayView view = view_array(input, spec.dtype, false, "x");
            PYCOMM_ENFORCE(view.count == count, "x has ", view.count, " elements, the operation ", count);
            // An all-reduce of a writable buffer may write its result into it as it runs (shared
            // memory): the caller copies the result back into the same buffer (Communicator).
            void* in_place = spec.collective == ft::Collective::all_reduce && input.writeable()
                                 ? view.data
                                 : nullptr;
            OpHandle handle{nullptr, input};
            {
              py::gil_scoped_release release;
              handle.op = engine.submit(spec, view.data, in_place);
            }
            return handle;
          },
          py::arg("collective"), py::arg("input"), py::arg("dtype"), py::arg("op"), py::arg("count"), py::arg("root"),
          py::arg("tag"), py::arg("quantization") = "none")
      .def(
          "abort",
          [](RingEngine& engine, const std::string& reason) {
            py::gil_scoped_release release;
            engine.abort(reason);
          },
          py::arg("reason"))
      .def_property_readonly("bytes_sent_per_connection", &RingEngine::bytes_sent_per_connection,
                             "Bytes sent on each connection to the next peer.")
      .def_property_readonly("connections", &RingEngine::connections)
      .def_property_readonly("failed", &RingEngine::failed)
      .def_property_readonly("failure", &RingEngine::failure)
      .def_property_readonly("rank", &RingEngine::rank)
      .def_property_readonly("world", &RingEngine::world)
      .def_property_readonly("bytes_sent", &RingEngine::bytes_sent)
      .def_property_readonly("bytes_received", &RingEngine::bytes_received)
      .def("tag_states", [](const RingEngine& engine) {
        std::vector<std::tuple<std::uint64_t, std::uint64_t, std::uint64_t, bool>> states;
        for (const ft::TagState& state : engine.tag_states()) {
          states.emplace_back(state.tag, state.submitted, state.completed, state.outstanding_has_result);
        }
        return states;
      });
}

}  // namespace pycomm::bindings
