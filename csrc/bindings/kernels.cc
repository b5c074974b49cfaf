// pycomm._core.kernels: the shared byte kernels, for pycomm.kernels and the benchmarks.
// Arguments arrive already resolved by pycomm/kernels.py (dtype names, allocated outputs); this
// layer checks them against the arrays and releases the GIL around every kernel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <string>
#include <vector>

#include "bindings/arrays.h"
#include "common/error.h"
#include "common/thread_pool.h"
#include "kernels/hash.h"
#include "kernels/kernel_table.h"
#include "kernels/quantize.h"
#include "kernels/reduce.h"

namespace py = pybind11;

namespace pycomm::bindings {
namespace {

using kernels::ReduceOp;

void check_same_count(const ArrayView& a, const ArrayView& b, std::string_view role_a, std::string_view role_b) {
  PYCOMM_ENFORCE(a.count == b.count, role_a, " has ", a.count, " elements but ", role_b, " has ", b.count);
}

void bind_reductions(py::module_& m) {
  m.def("accumulator_dtype", [](const std::string& dtype, const std::string& op) {
    return std::string(dtype_name(kernels::accumulator_dtype(dtype_from_name(dtype), kernels::reduce_op_from_name(op))));
  });

  m.def("reduce_into", [](py::array dst, py::array src, const std::string& op_name, const std::string& dtype_name) {
    const DType dtype = dtype_from_name(dtype_name);
    const ReduceOp op = kernels::reduce_op_from_name(op_name);
    const ArrayView d = view_array(dst, dtype, true, "dst");
    const ArrayView s = view_array(src, dtype, false, "src");
    check_same_count(d, s, "dst", "src");
    py::gil_scoped_release release;
    kernels::reduce_into(d.data, s.data, d.count, dtype, op);
  });

  m.def("reduce", [](py::array out, const std::vector<py::array>& inputs, const std::string& op_name,
                     const std::string& dtype_name) {
    const DType dtype = dtype_from_name(dtype_name);
    const ReduceOp op = kernels::reduce_op_from_name(op_name);
    const ArrayView o = view_array(out, dtype, true, "out");
    std::vector<const void*> pointers;
    for (std::size_t k = 0; k < inputs.size(); ++k) {
      const std::string role = "inputs[" + std::to_string(k) + "]";
      const ArrayView input = view_array(inputs[k], dtype, false, role);
      check_same_count(o, input, "out", role);
      pointers.push_back(input.data);
    }
    py::gil_scoped_release release;
    kernels::reduce(o.data, pointers.data(), pointers.size(), o.count, dtype, op);
  });

  // widen and accumulate: acc (accumulator_dtype(dtype, op), allocated by the Python layer) and src.
  using StreamingKernel = void (*)(void*, const void*, std::size_t, DType, ReduceOp);
  auto streaming = [](StreamingKernel kernel) {
    return [kernel](py::array acc, py::array src, const std::string& op_name, const std::string& dtype_name) {
      const DType dtype = dtype_from_name(dtype_name);
      const ReduceOp op = kernels::reduce_op_from_name(op_name);
      const ArrayView a = view_array(acc, kernels::accumulator_dtype(dtype, op), true, "acc");
      const ArrayView s = view_array(src, dtype, false, "src");
      check_same_count(a, s, "acc", "src");
      py::gil_scoped_release release;
      kernel(a.data, s.data, a.count, dtype, op);
    };
  };
  m.def("widen", streaming(kernels::widen));
  m.def("accumulate", streaming(kernels::accumulate));

  m.def("finalize", [](py::array out, py::array acc, const std::string& op_name, const std::string& dtype_name,
                       std::size_t contributions) {
    const DType dtype = dtype_from_name(dtype_name);
    const ReduceOp op = kernels::reduce_op_from_name(op_name);
    const ArrayView o = view_array(out, dtype, true, "out");
    const ArrayView a = view_array(acc, kernels::accumulator_dtype(dtype, op), false, "acc");
    check_same_count(o, a, "out", "acc");
    py::gil_scoped_release release;
    kernels::finalize(o.data, a.data, o.count, dtype, op, contributions);
  });
}

kernels::QuantizeOptions make_options(const std::string& scheme, std::size_t block_size, const std::string& rounding,
                                      std::uint64_t seed) {
  kernels::QuantizeOptions options;
  options.scheme = kernels::quant_scheme_from_name(scheme);
  options.block_size = block_size;
  options.rounding = kernels::rounding_from_name(rounding);
  options.seed = seed;
  kernels::validate(options);
  return options;
}

// Checks the sizes of the quantized buffers against the element count.
void check_quantized(const ArrayView& data, const ArrayView& scales, const ArrayView* zero_points,
                     kernels::QuantScheme scheme, std::size_t count, std::size_t block_size) {
  const std::size_t blocks = kernels::quantized_block_count(count, block_size);
  PYCOMM_ENFORCE(data.bytes == kernels::quantized_data_bytes(scheme, count), "data: ", count, " elements in ",
                 kernels::quant_scheme_name(scheme), " need ", kernels::quantized_data_bytes(scheme, count),
                 " bytes, got ", data.bytes);
  PYCOMM_ENFORCE(scales.count == blocks, "scales: ", count, " elements in blocks of ", block_size, " need ", blocks,
                 " scales, got ", scales.count);
  if (kernels::has_zero_points(scheme)) {
    PYCOMM_ENFORCE(zero_points != nullptr, "zero_points: uint8 needs one per block");
    PYCOMM_ENFORCE(zero_points->count == blocks, "zero_points: need ", blocks, ", got ", zero_points->count);
  }
}

void bind_quantizers(py::module_& m) {
  m.def("quantize", [](py::array src, const std::string& dtype_name, py::array data, py::array scales,
                       std::optional<py::array> zero_points, const std::string& scheme, std::size_t block_size,
                       const std::string& rounding, std::uint64_t seed) {
    const DType dtype = dtype_from_name(dtype_name);
    const kernels::QuantizeOptions options = make_options(scheme, block_size, rounding, seed);
    const ArrayView s = view_array(src, dtype, false, "x");
    const ArrayView d = view_array(data, options.scheme == kernels::QuantScheme::int8_absmax ? DType::i8 : DType::u8,
                                   true, "data");
    const ArrayView sc = view_array(scales, DType::f32, true, "scales");
    std::optional<ArrayView> zp;
    if (zero_points) zp = view_array(*zero_points, DType::f32, true, "zero_points");
    check_quantized(d, sc, zp ? &*zp : nullptr, options.scheme, s.count, block_size);
    py::gil_scoped_release release;
    kernels::quantize(s.data, dtype, s.count, options, d.data, static_cast<float*>(sc.data),
                      zp ? static_cast<float*>(zp->data) : nullptr);
  });

  m.def("dequantize", [](py::array data, py::array scales, std::optional<py::array> zero_points,
                         const std::string& scheme_name, std::size_t block_size, py::array out,
                         const std::string& out_dtype_name, bool accumulate) {
    const kernels::QuantScheme scheme = kernels::quant_scheme_from_name(scheme_name);
    const DType out_dtype = dtype_from_name(out_dtype_name);
    const ArrayView o = view_array(out, out_dtype, true, "out");
    const ArrayView d = view_array(data, scheme == kernels::QuantScheme::int8_absmax ? DType::i8 : DType::u8, false,
                                   "data");
    const ArrayView sc = view_array(scales, DType::f32, false, "scales");
    std::optional<ArrayView> zp;
    if (zero_points) zp = view_array(*zero_points, DType::f32, false, "zero_points");
    PYCOMM_ENFORCE(block_size > 0, "block_size must be positive");
    check_quantized(d, sc, zp ? &*zp : nullptr, scheme, o.count, block_size);
    py::gil_scoped_release release;
    kernels::dequantize(d.data, static_cast<const float*>(sc.data), zp ? static_cast<const float*>(zp->data) : nullptr,
                        o.count, scheme, block_size, o.data, out_dtype, accumulate);
  });

  m.def("cast", [](py::array dst, const std::string& dst_dtype_name, py::array src, const std::string& src_dtype_name) {
    const DType dst_dtype = dtype_from_name(dst_dtype_name);
    const DType src_dtype = dtype_from_name(src_dtype_name);
    const ArrayView d = view_array(dst, dst_dtype, true, "out");
    const ArrayView s = view_array(src, src_dtype, false, "x");
    check_same_count(d, s, "out", "x");
    py::gil_scoped_release release;
    kernels::cast(d.data, dst_dtype, s.data, src_dtype, d.count);
  });
}

void bind_hash(py::module_& m) {
  m.attr("HASH_VERSION") = kernels::kHashVersion;
  m.attr("HASH_LEAF_BYTES") = kernels::kHashLeafBytes;
  m.def("hash64", [](py::buffer buffer, std::uint64_t seed) {
    const py::buffer_info info = buffer.request();
    const ArrayView bytes = view_bytes(info, "data");
    py::gil_scoped_release release;
    return kernels::hash64(bytes.data, bytes.bytes, seed);
  });
}

}  // namespace

void bind_kernels(py::module_& m) {
  m.def("isa", [] { return std::string(kernels::kernel_table().isa); });
  m.def("runnable_isas", [] { return kernels::runnable_isas(); });
  m.def("threads", [] { return kernel_threads(); });
  m.def("set_threads", [](int threads) {
    py::gil_scoped_release release;  // joining the old pool waits for kernels on other threads
    set_kernel_threads(threads);
  });
  bind_reductions(m);
  bind_quantizers(m);
  bind_hash(m);
}

}  // namespace pycomm::bindings
