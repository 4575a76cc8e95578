#include "runtime/blas.hpp"

#ifndef _WIN32
#include <dlfcn.h>
#endif

#include <algorithm>
#include <atomic>
#include <mutex>

namespace sdcpp::blas {

namespace {

// CBLAS enum values (cblas.h): row-major 101, no-transpose 111, transpose 112.
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
using sgemm_fn = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float, float*,
                          int);
using set_threads_fn = void (*)(int);

std::mutex load_mutex;
std::atomic<sgemm_fn> sgemm{nullptr};
std::atomic<bool> use{true};
std::string loaded_path;

// Rows [r0, r1) of y [R, M] (row-major) = x [R, K] * w [M, K]^T.
void rows_product(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* w = dst->src[0];
    const ggml_tensor* x = dst->src[1];
    const int64_t K = w->ne[0], M = w->ne[1], R = ggml_nelements(x) / K;
    // Blocks of 16 rows keep each thread's sgemm on whole register tiles.
    const int64_t per = ((R + nth - 1) / nth + 15) & ~int64_t(15);
    const int64_t r0 = std::min<int64_t>(R, per * ith), r1 = std::min<int64_t>(R, r0 + per);
    if (r0 >= r1) {
        return;
    }
    sgemm.load()(kRowMajor, kNoTrans, kTrans, static_cast<int>(r1 - r0), static_cast<int>(M), static_cast<int>(K),
                 1.0f, static_cast<const float*>(x->data) + r0 * K, static_cast<int>(K),
                 static_cast<const float*>(w->data), static_cast<int>(K), 0.0f,
                 static_cast<float*>(dst->data) + r0 * M, static_cast<int>(M));
}

}  // namespace

bool load(const std::string& path) {
    std::lock_guard<std::mutex> lock(load_mutex);
    if (sgemm.load() != nullptr) {
        return true;
    }
#ifdef _WIN32
    (void)path;
    return false;  // not wired up for Windows (LoadLibrary); products stay on ggml there
#else
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) {
        return false;
    }
    auto fn = reinterpret_cast<sgemm_fn>(dlsym(lib, "scipy_cblas_sgemm"));
    auto threads = reinterpret_cast<set_threads_fn>(dlsym(lib, "scipy_openblas_set_num_threads"));
    if (fn == nullptr || threads == nullptr) {
        dlclose(lib);
        return false;
    }
    threads(1);  // ggml's threads each run one sgemm; OpenBLAS's own pool would compete with them for the cores
    loaded_path = path;
    sgemm.store(fn);
    return true;
#endif
}

std::string library() {
    std::lock_guard<std::mutex> lock(load_mutex);
    return loaded_path;
}

void set_enabled(bool on) { use.store(on); }

bool enabled() { return use.load() && sgemm.load() != nullptr; }

ggml_tensor* mul_mat(ggml_context* ctx, ggml_tensor* w, ggml_tensor* x) {
    ggml_tensor* args[] = {w, x};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, w->ne[1], x->ne[1], x->ne[2], x->ne[3], args, 2, rows_product,
                          GGML_N_TASKS_MAX, nullptr);
}

}  // namespace sdcpp::blas
