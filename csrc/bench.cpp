#include "bench.hpp"

#include <algorithm>
#include <chrono>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <ggml-alloc.h>
#include <ggml-backend.h>

#include "convert.hpp"
#include "devices.hpp"
#include "types.hpp"

namespace sdcpp {
namespace {

// RAII owners so every early throw releases what was created so far.
struct CtxDeleter {
    void operator()(ggml_context* c) const { ggml_free(c); }
};
struct BackendDeleter {
    void operator()(ggml_backend* b) const { ggml_backend_free(b); }
};
struct BufferDeleter {
    void operator()(ggml_backend_buffer* b) const { ggml_backend_buffer_free(b); }
};
using CtxPtr = std::unique_ptr<ggml_context, CtxDeleter>;
using BackendPtr = std::unique_ptr<ggml_backend, BackendDeleter>;
using BufferPtr = std::unique_ptr<ggml_backend_buffer, BufferDeleter>;

CtxPtr new_meta_ctx(size_t n_tensors, bool with_graph) {
    ggml_init_params p{};
    p.mem_size = ggml_tensor_overhead() * n_tensors + (with_graph ? ggml_graph_overhead() : 0);
    p.no_alloc = true;
    CtxPtr ctx(ggml_init(p));
    if (!ctx) {
        throw std::runtime_error("ggml_init failed");
    }
    return ctx;
}

std::vector<float> random_f32(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> v(n);
    for (auto& x : v) {
        x = dist(rng);
    }
    return v;
}

ggml_backend_buffer_type_t cpu_repack_buft(ggml_backend_dev_t dev) {
    auto get_extra = reinterpret_cast<ggml_backend_dev_get_extra_bufts_t>(
        ggml_backend_reg_get_proc_address(ggml_backend_dev_backend_reg(dev), "ggml_backend_dev_get_extra_bufts"));
    if (get_extra != nullptr) {
        for (ggml_backend_buffer_type_t* b = get_extra(dev); b != nullptr && *b != nullptr; ++b) {
            if (std::string(ggml_backend_buft_name(*b)) == "CPU_REPACK") {
                return *b;
            }
        }
    }
    throw std::invalid_argument("this CPU backend has no CPU_REPACK buffer type");
}

}  // namespace

void check_bench_args(ggml_type type, int64_t M, int64_t N, int64_t K, int iters, int n_threads) {
    if (M <= 0 || N <= 0 || K <= 0) {
        throw std::invalid_argument("M, N and K must be positive");
    }
    if (iters <= 0) {
        throw std::invalid_argument("iters must be positive");
    }
    resolve_threads(n_threads);
    if (!type_can_quantize(type)) {
        throw std::invalid_argument(std::string("cannot create random weights of type ") + ggml_type_name(type));
    }
    // Throws on bad block divisibility and on sizes that would overflow.
    checked_mul(checked_row_size(type, K), static_cast<size_t>(M));
    checked_mul(checked_mul(static_cast<size_t>(K), static_cast<size_t>(std::max(M, N))), sizeof(float));
}

double bench_mul_mat(ggml_type type, int64_t M, int64_t N, int64_t K, int iters, int n_threads, bool repack) {
    const int threads = resolve_threads(n_threads);
    ggml_backend_dev_t dev = cpu_device();
    BackendPtr backend(ggml_backend_dev_init(dev, nullptr));
    if (!backend) {
        throw std::runtime_error("failed to initialise the CPU backend");
    }
    set_backend_threads(backend.get(), threads);

    // Weight in its own context so it can go into a different buffer type (repack).
    CtxPtr ctx_w = new_meta_ctx(1, false);
    CtxPtr ctx = new_meta_ctx(3, true);
    ggml_tensor* a = ggml_new_tensor_2d(ctx_w.get(), type, K, M);
    ggml_tensor* b = ggml_new_tensor_2d(ctx.get(), GGML_TYPE_F32, K, N);
    ggml_tensor* c = ggml_mul_mat(ctx.get(), a, b);  // ne = [M, N]
    ggml_cgraph* graph = ggml_new_graph(ctx.get());
    ggml_build_forward_expand(graph, c);

    BufferPtr buf_w(repack ? ggml_backend_alloc_ctx_tensors_from_buft(ctx_w.get(), cpu_repack_buft(dev))
                           : ggml_backend_alloc_ctx_tensors(ctx_w.get(), backend.get()));
    BufferPtr buf(ggml_backend_alloc_ctx_tensors(ctx.get(), backend.get()));
    if (!buf_w || !buf) {
        throw std::runtime_error("failed to allocate benchmark tensors");
    }
    // The repack buffer's set_tensor dereferences a per-tensor layout that is null for
    // unsupported types/shapes (it would crash), so check it before writing.
    if (repack && a->extra == nullptr) {
        throw std::invalid_argument(std::string("no repacked layout for ") + ggml_type_name(type) +
                                    " at this shape on this CPU");
    }
    if (!ggml_backend_dev_supports_op(dev, c)) {
        throw std::invalid_argument(std::string("the CPU backend has no mul_mat for ") + ggml_type_name(type));
    }

    {
        std::vector<float> w = random_f32(static_cast<size_t>(M * K), 1234);
        std::vector<uint8_t> q(ggml_nbytes(a));
        convert_rows(GGML_TYPE_F32, reinterpret_cast<const uint8_t*>(w.data()), type, q.data(), M, K, threads);
        ggml_backend_tensor_set(a, q.data(), 0, q.size());
    }
    {
        std::vector<float> x = random_f32(static_cast<size_t>(N * K), 5678);
        ggml_backend_tensor_set(b, x.data(), 0, ggml_nbytes(b));
    }

    double best = std::numeric_limits<double>::infinity();
    for (int i = -1; i < iters; ++i) {  // i == -1 is an untimed warm-up
        const auto t0 = std::chrono::steady_clock::now();
        if (ggml_backend_graph_compute(backend.get(), graph) != GGML_STATUS_SUCCESS) {
            throw std::runtime_error("ggml graph compute failed");
        }
        const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
        if (i >= 0) {
            best = std::min(best, dt.count());
        }
    }
    return best;
}

}  // namespace sdcpp
