// Python bindings of sdcpp._core. Argument checking happens here or in the helpers, before
// any ggml call, because ggml reports misuse with GGML_ASSERT (process abort), not errors.
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <ggml.h>

#include "bench.hpp"
#include "convert.hpp"
#include "devices.hpp"
#include "pybuffer.hpp"
#include "types.hpp"
#include "models/register.hpp"
#include "runtime/amx.hpp"
#include "runtime/f16_gemm.hpp"
#include "runtime/blas.hpp"
#include "runtime/cancel.hpp"
#include "runtime/graph_runner.hpp"
#include "runtime/peaks.hpp"
#include "weight_store.hpp"

namespace py = pybind11;
using namespace sdcpp;

namespace {

py::dict py_system_info() {
    const SystemInfo info = system_info();
    py::list devices;
    for (const auto& d : info.devices) {
        py::dict e;
        e["name"] = d.name;
        e["description"] = d.description;
        e["type"] = d.type;
        e["memory_total"] = d.memory_total;
        e["memory_free"] = d.memory_free;
        devices.append(e);
    }
    py::dict features;
    for (const auto& f : info.cpu_features) {
        features[py::str(f.first)] = f.second;
    }
    py::dict out;
    out["devices"] = devices;
    out["registries"] = info.registries;
    out["cpu_features"] = features;
    out["cpu_backend"] = info.cpu_backend;
    out["cpu_variant"] = info.cpu_variant;
    return out;
}

py::dict py_type_info(const std::string& name) {
    const ggml_type t = type_from_name(name);
    py::dict d;
    d["blck_size"] = ggml_blck_size(t);
    d["type_size"] = ggml_type_size(t);
    d["is_quantized"] = ggml_is_quantized(t);
    d["can_quantize"] = type_can_quantize(t);
    d["has_to_float"] = type_has_to_float(t);
    return d;
}

size_t py_row_size(const std::string& type, int64_t n_per_row) {
    return checked_row_size(type_from_name(type), n_per_row);
}

void require_to_float(ggml_type t) {
    if (!type_has_to_float(t)) {
        throw std::invalid_argument(std::string("cannot convert from ") + ggml_type_name(t) + " (no to_float)");
    }
}

size_t expect_size(const ByteView& view, size_t row_bytes, int64_t n_rows, const char* what) {
    if (n_rows < 0) {
        throw std::invalid_argument("n_rows must be >= 0");
    }
    const size_t want = checked_mul(row_bytes, static_cast<size_t>(n_rows));
    if (view.size() != want) {
        throw std::invalid_argument(std::string(what) + " has " + std::to_string(view.size()) + " bytes, expected " +
                                    std::to_string(want));
    }
    return want;
}

py::array_t<uint8_t> py_convert(py::handle src, const std::string& src_type, int64_t n_rows, int64_t n_per_row,
                                const std::string& dst_type, int n_threads) {
    const ggml_type st = type_from_name(src_type);
    const ggml_type dt = type_from_name(dst_type);
    const int threads = resolve_threads(n_threads);
    const size_t src_row = checked_row_size(st, n_per_row);
    const size_t dst_row = checked_row_size(dt, n_per_row);
    if (st != dt) {
        require_to_float(st);
        if (!type_can_quantize(dt)) {
            throw std::invalid_argument(std::string("cannot convert to ") + ggml_type_name(dt) +
                                        (ggml_quantize_requires_imatrix(dt)
                                             ? " (ggml needs an importance matrix for it)"
                                             : " (ggml_quantize_chunk does not support it)"));
        }
    }
    ByteView view(src, "src");
    const size_t in_bytes = expect_size(view, src_row, n_rows, "src");
    py::array_t<uint8_t> out(static_cast<py::ssize_t>(checked_mul(dst_row, static_cast<size_t>(n_rows))));
    uint8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        if (st == dt) {
            std::memcpy(dst, view.data(), in_bytes);
        } else {
            convert_rows(st, view.data(), dt, dst, n_rows, n_per_row, threads);
        }
    }
    return out;
}

py::array_t<float> py_dequantize(py::handle src, const std::string& src_type, int64_t n, int n_threads) {
    const ggml_type st = type_from_name(src_type);
    const int threads = resolve_threads(n_threads);
    require_to_float(st);
    if (n < 0) {
        throw std::invalid_argument("n must be >= 0");
    }
    const int64_t blck = ggml_blck_size(st);
    if (n % blck != 0) {
        throw std::invalid_argument("n=" + std::to_string(n) + " is not a multiple of the " + src_type +
                                    " block size " + std::to_string(blck));
    }
    ByteView view(src, "src");
    expect_size(view, ggml_type_size(st), n / blck, "src");
    py::array_t<float> out(static_cast<py::ssize_t>(n));
    float* dst = out.mutable_data();
    if (n > 0) {
        py::gil_scoped_release nogil;
        // One block per "row": dequantization is block-local, and this lets it use threads.
        convert_rows(st, view.data(), GGML_TYPE_F32, reinterpret_cast<uint8_t*>(dst), n / blck, blck, threads);
    }
    return out;
}

double py_bench(const std::string& type, int64_t M, int64_t N, int64_t K, int iters, int n_threads, bool repack) {
    const ggml_type t = type_from_name(type);
    check_bench_args(t, M, N, K, iters, n_threads);
    py::gil_scoped_release nogil;
    return bench_mul_mat(t, M, N, K, iters, n_threads, repack);
}

// a [M, K] @ b [K, N] (b [N, K] when trans_b) on the AMX kernel, f32 out; for tests and benchmarks.
py::array_t<float> py_amx_gemm(py::array_t<float, py::array::c_style | py::array::forcecast> a,
                               py::array_t<float, py::array::c_style | py::array::forcecast> b, bool trans_b) {
    if (!amx::available()) {
        throw std::runtime_error("AMX is not available: " + amx::unavailable_reason());
    }
    if (a.ndim() != 2 || b.ndim() != 2) {
        throw std::invalid_argument("amx_gemm takes two matrices");
    }
    const int64_t M = a.shape(0), K = a.shape(1);
    const int64_t N = trans_b ? b.shape(0) : b.shape(1);
    if ((trans_b ? b.shape(1) : b.shape(0)) != K) {
        throw std::invalid_argument("amx_gemm: inner dimensions differ");
    }
    py::array_t<float> c({M, N});
    const float* pa = a.data();
    const float* pb = b.data();
    float* pc = c.mutable_data();
    {
        py::gil_scoped_release nogil;
        amx::gemm(trans_b, M, N, K, 1.0f, pa, K, pb, trans_b ? K : N, 0.0f, pc, N);
    }
    return c;
}

// The bits of the float16 weight of an f16 test hook `fn`, once the kernel is known to run here.
const uint16_t* f16_weight(const py::array& w, const char* fn) {
    if (!f16::available()) {
        throw std::runtime_error("AVX512-FP16 products are not available: " + f16::unavailable_reason());
    }
    if (w.dtype().kind() != 'f' || w.dtype().itemsize() != 2 || !(w.flags() & py::array::c_style)) {
        throw std::invalid_argument(std::string(fn) + ": w must be a C-contiguous float16 array");
    }
    return static_cast<const uint16_t*>(w.data());
}

// x [R, K] (f32) @ w.T for w [M, K] float16, + bias [M] (or None), on one thread's AVX512-FP16 kernel; for tests
// and benchmarks.
py::array_t<float> py_f16_gemm(py::array_t<float, py::array::c_style | py::array::forcecast> x, py::array w,
                               std::optional<py::array_t<float, py::array::c_style | py::array::forcecast>> bias) {
    const auto* pw = f16_weight(w, "f16_gemm");
    if (x.ndim() != 2 || w.ndim() != 2 || x.shape(1) != w.shape(1)) {
        throw std::invalid_argument("f16_gemm takes x [R, K] and w [M, K]");
    }
    const int64_t R = x.shape(0), K = x.shape(1), M = w.shape(0);
    if (bias && (bias->ndim() != 1 || bias->shape(0) != M)) {
        throw std::invalid_argument("f16_gemm: bias must have M elements");
    }
    py::array_t<float> y({R, M});
    const float* px = x.data();
    const float* pb = bias ? bias->data() : nullptr;
    float* py_ = y.mutable_data();
    {
        py::gil_scoped_release nogil;
        f16::Tokens tokens;
        tokens.x = px;
        tokens.ld = K;
        const f16::Output out{py_, M, 0};
        for (int64_t t0 = 0; t0 < R; t0 += f16::kBlockTokens) {
            f16::product_block(tokens, pw, K, pb, out, t0, std::min(f16::kBlockTokens, R - t0), M, K);
        }
    }
    return y;
}

// A 3x3 conv (stride 1, padding 1) of x [N, C, H, W] (f32, W a multiple of 16) with w [OC, C, 3, 3] float16 (+ bias
// [OC]) on one thread's AVX512-FP16 kernel, reading the padded planes in place; -> [N, OC, H, W]. Tests, benchmarks.
py::array_t<float> py_f16_conv3x3(py::array_t<float, py::array::c_style | py::array::forcecast> x, py::array w,
                                  std::optional<py::array_t<float, py::array::c_style | py::array::forcecast>> bias) {
    const auto* pw = f16_weight(w, "f16_conv3x3");
    if (x.ndim() != 4 || w.ndim() != 4 || w.shape(1) != x.shape(1) || w.shape(2) != 3 || w.shape(3) != 3) {
        throw std::invalid_argument("f16_conv3x3 takes x [N, C, H, W] and w [OC, C, 3, 3]");
    }
    const int64_t N = x.shape(0), C = x.shape(1), H = x.shape(2), W = x.shape(3), OC = w.shape(0);
    if (W % 16 != 0) {
        throw std::invalid_argument("f16_conv3x3: the width must be a multiple of 16");
    }
    if (bias && (bias->ndim() != 1 || bias->shape(0) != OC)) {
        throw std::invalid_argument("f16_conv3x3: bias must have OC elements");
    }
    std::vector<float> padded(static_cast<size_t>(N * C * (H + 2) * (W + 2)), 0.0f);
    const float* px = x.data();
    for (int64_t p = 0; p < N * C; p++) {
        for (int64_t r = 0; r < H; r++) {
            std::copy(px + (p * H + r) * W, px + (p * H + r + 1) * W,
                      padded.data() + (p * (H + 2) + r + 1) * (W + 2) + 1);
        }
    }
    const int64_t R = N * H * W, K = 9 * C;
    py::array_t<float> y({N, OC, H, W});
    f16::Tokens tokens;
    tokens.x = padded.data();
    tokens.channels = C;
    tokens.width = W;
    tokens.height = H;
    const f16::Output out{y.mutable_data(), OC, H * W};
    const float* pb = bias ? bias->data() : nullptr;
    {
        py::gil_scoped_release nogil;
        for (int64_t t0 = 0; t0 < R; t0 += f16::kBlockTokens) {
            f16::product_block(tokens, pw, K, pb, out, t0, std::min(f16::kBlockTokens, R - t0), OC, K);
        }
    }
    return y;
}

void bind_weight_store(py::module_& m) {
    py::class_<WeightStore>(m, "WeightStore",
                            "Named ggml tensors in one backend buffer: add() all, allocate(), then set()/get().")
        .def(py::init<const std::string&, int>(), py::arg("device") = "cpu", py::arg("n_threads") = 0)
        .def(
            "add",
            [](WeightStore& s, const std::string& name, const std::string& type, const std::vector<int64_t>& ne) {
                s.add(name, type_from_name(type), ne);
            },
            py::arg("name"), py::arg("type"), py::arg("ne"))
        .def("allocate", &WeightStore::allocate)
        .def("buffer_size", &WeightStore::buffer_size)
        .def(
            "set",
            [](WeightStore& s, const std::string& name, py::handle data) {
                ByteView view(data, "data");
                py::gil_scoped_release nogil;
                s.set(name, view.data(), view.size());
            },
            py::arg("name"), py::arg("data"))
        .def(
            "get",
            [](const WeightStore& s, const std::string& name) {
                const size_t n = s.nbytes(name);
                py::array_t<uint8_t> out(static_cast<py::ssize_t>(n));
                uint8_t* dst = out.mutable_data();
                {
                    py::gil_scoped_release nogil;
                    s.get(name, dst, n);
                }
                return out;
            },
            py::arg("name"))
        .def("names", &WeightStore::names)
        .def(
            "type", [](const WeightStore& s, const std::string& name) { return std::string(type_name(s.type(name))); },
            py::arg("name"))
        .def("ne", &WeightStore::ne, py::arg("name"))
        .def("nbytes", &WeightStore::nbytes, py::arg("name"))
        .def("device", &WeightStore::device);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
    m.doc() = "sdcpp native core: ggml type conversion, device info and weight storage";
    // Out-of-memory while allocating a graph becomes the package's own ResourceError, a cancelled pass its
    // Cancelled (looked up when raised: sdcpp.errors is plain Python and always importable by then).
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) {
                std::rethrow_exception(p);
            }
        } catch (const ComputeBufferError& e) {
            py::object cls = py::module_::import("sdcpp.errors").attr("ResourceError");
            PyErr_SetString(cls.ptr(), e.what());
        } catch (const CancelledError& e) {  // a pass stopped by its CancelToken
            if (e.reason == CancelToken::Reason::Interrupt) {
                PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
            } else {
                py::object cls = py::module_::import("sdcpp.errors").attr("Cancelled");
                PyErr_SetString(cls.ptr(), e.what());
            }
        }
    });

    m.def("ggml_version", [] { return std::string(ggml_version()); });
    m.def("ggml_commit", [] { return std::string(ggml_commit()); });
    m.def("system_info", &py_system_info);
    m.def("ggml_library_dir", &ggml_library_dir, "The folder libggml was loaded from.");
    m.def("load_backends", &load_backends, py::arg("dir") = "",
          "Register ggml's backend modules (the best CPU variant for this CPU, GPU modules) from `dir`, by default "
          "the folder of libggml; once per process. Returns the folder searched.");
    m.def("physical_cores", &physical_cores, "Physical CPU cores: the default thread count (n_threads=0).");
    m.def("type_info", &py_type_info, py::arg("name"));
    m.def("type_names", &type_names);
    m.def("row_size", &py_row_size, py::arg("type"), py::arg("n_per_row"));
    m.def("convert", &py_convert, py::arg("src"), py::arg("src_type"), py::arg("n_rows"), py::arg("n_per_row"),
          py::arg("dst_type"), py::arg("n_threads") = 0,
          "Convert n_rows rows of n_per_row elements between ggml types; returns raw bytes (uint8).");
    m.def("dequantize", &py_dequantize, py::arg("src"), py::arg("src_type"), py::arg("n"), py::arg("n_threads") = 0,
          "Decode n elements of src_type into a float32 array.");
    m.def("bench_mul_mat", &py_bench, py::arg("type"), py::arg("M"), py::arg("N"), py::arg("K"),
          py::arg("iters") = 10, py::arg("n_threads") = 2, py::arg("repack") = false,
          "Best wall time (s) of a (M x K weight) x (K x N f32) mul_mat on the CPU backend.");
    m.def("blas_load", &blas::load, py::arg("path"),
          "Open an OpenBLAS (scipy-openblas32) for wide f32 products; False when it cannot be used.");
    m.def("blas_library", &blas::library, "Path of the OpenBLAS in use, or '' when products stay on ggml.");
    m.def("set_blas_enabled", &blas::set_enabled, py::arg("on"), "Route wide f32 products to OpenBLAS (default on).");
    m.def("blas_enabled", &blas::enabled);
    m.def("amx_available", &amx::available, "AMX bf16 products can run here (precision='bf16' uses them).");
    m.def("amx_unavailable_reason", &amx::unavailable_reason);
    m.def(
        "instruction_peaks",
        [](double seconds) {
            if (!(seconds > 0.0 && seconds <= 10.0)) {
                throw std::invalid_argument("instruction_peaks: seconds must be in (0, 10]");
            }
            py::gil_scoped_release nogil;
            return peaks::instruction_peaks(seconds);
        },
        py::arg("seconds") = 0.1,
        "GFLOP/s of one core for each multiply-add instruction this CPU supports (f32 FMA, vdpbf16ps, f16 FMA).");
    m.def("f16_available", &f16::available, "AVX512-FP16 products can run here (precision='f16' uses them).");
    m.def("f16_unavailable_reason", &f16::unavailable_reason);
    m.def("f16_gemm", &py_f16_gemm, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
          "x @ w.T (+ bias) for float32 x [R, K] and float16 w [M, K] on one thread's AVX512-FP16 kernel (tests, "
          "benchmarks).");
    m.def("f16_conv3x3", &py_f16_conv3x3, py::arg("x"), py::arg("w"), py::arg("bias") = py::none(),
          "3x3 conv (stride 1, padding 1) of float32 x [N, C, H, W] with float16 w [OC, C, 3, 3] on one thread's "
          "AVX512-FP16 kernel (tests, benchmarks).");
    m.def("amx_gemm", &py_amx_gemm, py::arg("a"), py::arg("b"), py::arg("trans_b") = false,
          "a @ b (or a @ b.T) of float32 matrices on one thread's AMX bf16 kernel (for tests and benchmarks).");
    bind_weight_store(m);

    register_models(m);  // graph bindings live next to each model (csrc/models/)
}
