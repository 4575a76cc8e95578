#include "runtime/blas.hpp"

#include "runtime/amx.hpp"
#include "runtime/f16_gemm.hpp"

#ifndef _WIN32
#include <dlfcn.h>
#endif

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <vector>

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

// OpenBLAS's row-major sgemm C = alpha A op(B) + beta C (A never transposed), with 64-bit sizes.
void product(int trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
             int64_t ldb, float beta, float* C, int64_t ldc) {
    sgemm.load()(kRowMajor, kNoTrans, trans_b, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), alpha, A,
                 static_cast<int>(lda), B, static_cast<int>(ldb), beta, C, static_cast<int>(ldc));
}

// The parameters of a conv op: the token to poll and the kernel.
struct OpArgs {
    const CancelToken* cancel;
    bool bf16;
};

// Softmax numerators of one row of scores, in place: exp(s - max(s)); returns their sum. Written as loops the
// compiler vectorizes (CMakeLists gives this file -fno-math-errno -fno-trapping-math -ffinite-math-only; one clone
// per SIMD width): exp(x) = 2^n e^r with x = n ln2 + r, |r| <= ln2/2, e^r from Cephes' expf polynomial (~1 ulp),
// 2^n through the exponent bits. Scores more than 87 below the row maximum (weights under 2^-125, next to a row
// sum of at least 1) are clamped there.
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
float softmax_numerators(float* s, int64_t n) {
    float peak[16];
    for (float& p : peak) {
        p = -3.0e38f;
    }
    const int64_t whole = n & ~int64_t(15);
    for (int64_t i = 0; i < whole; i += 16) {
        for (int j = 0; j < 16; j++) {
            peak[j] = s[i + j] > peak[j] ? s[i + j] : peak[j];
        }
    }
    float max = -3.0e38f;
    for (int64_t i = whole; i < n; i++) {
        max = s[i] > max ? s[i] : max;
    }
    for (float p : peak) {
        max = p > max ? p : max;
    }
    constexpr float log2e = 1.44269504088896341f, c1 = 0.693359375f, c2 = -2.12194440e-4f;
    float acc[16] = {};
    for (int64_t i = 0; i < whole; i += 16) {
        for (int j = 0; j < 16; j++) {
            float x = s[i + j] - max;
            x = x > -87.0f ? x : -87.0f;
            const float fn = __builtin_floorf(x * log2e + 0.5f);
            const float r = x - fn * c1 - fn * c2;
            float p = 1.9875691500e-4f;
            p = p * r + 1.3981999507e-3f;
            p = p * r + 8.3334519073e-3f;
            p = p * r + 4.1665795894e-2f;
            p = p * r + 1.6666665459e-1f;
            p = p * r + 5.0000001201e-1f;
            p = p * r * r + r + 1.0f;
            const int32_t bits = (static_cast<int32_t>(fn) + 127) << 23;
            float two_n;
            __builtin_memcpy(&two_n, &bits, sizeof(two_n));
            s[i + j] = p * two_n;
            acc[j] += s[i + j];
        }
    }
    float sum = 0.0f;
    for (int64_t i = whole; i < n; i++) {
        s[i] = std::exp(s[i] - max);
        sum += s[i];
    }
    for (float a : acc) {
        sum += a;
    }
    return sum;
}

// Query rows per block: the block's scores (rows x Tk floats) within ~1 MiB, half this CPU's L2.
int64_t query_block(int64_t Tq, int64_t Tk) {
    const int64_t rows = std::max<int64_t>(16, (int64_t(1) << 18) / std::max<int64_t>(Tk, 1)) & ~int64_t(15);
    return std::min<int64_t>(Tq, std::min<int64_t>(rows, 512));
}

struct AttentionArgs {
    const CancelToken* cancel;
    int64_t heads;
    bool bf16;
};

void attention_blocks(ggml_tensor* dst, int ith, int nth, void* userdata) {
    const ggml_tensor* q = dst->src[0];
    const ggml_tensor* k = dst->src[1];
    const ggml_tensor* v = dst->src[2];
    const auto* args = static_cast<const AttentionArgs*>(userdata);
    const int64_t heads = args->heads;
    const int64_t C = q->ne[0], Tq = q->ne[1], Tk = k->ne[1], N = q->ne[2], D = C / heads;
    const int64_t rows = query_block(Tq, Tk), blocks = (Tq + rows - 1) / rows;
    const float scale = 1.0f / std::sqrt(static_cast<float>(D));
    thread_local std::vector<float> scores;
    scores.resize(static_cast<size_t>(rows * Tk));
    // bf16: a thread's tasks run consecutive query blocks of one head (task += nth), so its keys and values are
    // packed for AMX once per head, not once per block; queries and scores are packed per block.
    const int64_t no_shift = 0, Tkp = amx::pad32(Tk), Dp = amx::pad32(D);
    int64_t packed_head = -1;
    uint16_t* keys = args->bf16 ? amx::scratch(2, amx::packed_b_size(D, Tkp)) : nullptr;
    uint16_t* values = args->bf16 ? amx::scratch(3, amx::packed_b_size(Tk, Dp)) : nullptr;
    for (int64_t task = ith; task < N * heads * blocks; task += nth) {
        if (stop_requested(args->cancel)) {  // a task: two sgemm of at most 2^18 scores x the head width
            return;
        }
        const int64_t n = task / (heads * blocks), h = task / blocks % heads, q0 = task % blocks * rows;
        const int64_t m = std::min(rows, Tq - q0);
        const float* qp = static_cast<const float*>(q->data) + (n * Tq + q0) * C + h * D;
        const float* kp = static_cast<const float*>(k->data) + n * Tk * C + h * D;
        const float* vp = static_cast<const float*>(v->data) + n * Tk * C + h * D;
        float* op = static_cast<float*>(dst->data) + (n * Tq + q0) * C + h * D;
        if (args->bf16) {
            if (n * heads + h != packed_head) {
                amx::pack_b_trans(kp, C, D, Tk, keys, Tkp);
                amx::pack_b(vp, C, Tk, D, values);
                packed_head = n * heads + h;
            }
            uint16_t* a = amx::scratch(0, amx::packed_a_size(m, D));
            amx::pack_a(qp, C, m, D, a);
            amx::gemm_packed(1, &a, keys, &no_shift, Tkp, true, m, Tk, D, scale, 0.0f, scores.data(), Tk);
        } else {
            product(kTrans, m, Tk, D, scale, qp, C, kp, C, 0.0f, scores.data(), Tk);
        }
        float sums[512];
        for (int64_t r = 0; r < m; r++) {
            float* s = scores.data() + r * Tk;
            sums[r] = softmax_numerators(s, Tk);
        }
        if (args->bf16) {
            uint16_t* a = amx::scratch(0, amx::packed_a_size(m, Tk));
            amx::pack_a(scores.data(), Tk, m, Tk, a);
            amx::gemm_packed(1, &a, values, &no_shift, Dp, true, m, D, Tk, 1.0f, 0.0f, op, C);
        } else {
            product(kNoTrans, m, D, Tk, 1.0f, scores.data(), Tk, vp, C, 0.0f, op, C);
        }
        for (int64_t r = 0; r < m; r++) {
            const float inv = 1.0f / sums[r];
            for (int64_t d = 0; d < D; d++) {
                op[r * C + d] *= inv;
            }
        }
    }
}

// Rows [r0, r1) of y [R, M] (row-major) = x [R, K] * w [M, K]^T.
void rows_product(ggml_tensor* dst, int ith, int nth, void* userdata) {
    const ggml_tensor* w = dst->src[0];
    const ggml_tensor* x = dst->src[1];
    const auto* cancel = static_cast<const CancelToken*>(userdata);
    const int64_t K = w->ne[0], M = w->ne[1], R = ggml_nelements(x) / K;
    // Blocks of 16 rows keep each thread's sgemm on whole register tiles.
    const int64_t per = ((R + nth - 1) / nth + 15) & ~int64_t(15);
    const int64_t r0 = std::min<int64_t>(R, per * ith), r1 = std::min<int64_t>(R, r0 + per);
    if (r0 >= r1) {
        return;
    }
    const float* b = dst->src[2] != nullptr ? static_cast<const float*>(dst->src[2]->data) : nullptr;
    // Pieces of ~2^30 multiply-adds (a few ms of one core) between looks at the token. Each sgemm call packs its
    // operands again, so the pieces cut the larger of this thread's rows and the weight's rows: what is packed
    // once per piece is the smaller matrix. Most products fit in one piece.
    const int64_t rows = r1 - r0;
    const int64_t pieces = std::max<int64_t>(1, rows * M / std::max<int64_t>(1, (int64_t(1) << 30) / K));
    const bool by_rows = rows >= M;
    const int64_t span = by_rows ? rows : M;
    const int64_t step = std::max<int64_t>(16, ((span + pieces - 1) / pieces + 15) & ~int64_t(15));
    for (int64_t p0 = 0; p0 < span; p0 += step) {
        if (stop_requested(cancel)) {
            return;
        }
        const int64_t p1 = std::min(span, p0 + step);
        const int64_t y0 = by_rows ? r0 + p0 : r0, ny = by_rows ? p1 - p0 : rows;  // rows of y
        const int64_t m0 = by_rows ? 0 : p0, nm = by_rows ? M : p1 - p0;            // columns of y
        float* y = static_cast<float*>(dst->data) + y0 * M + m0;
        if (b != nullptr) {  // the bias goes in first and sgemm accumulates onto it: one pass over y saved
            for (int64_t r = 0; r < ny; r++) {
                std::copy(b + m0, b + m0 + nm, y + r * M);
            }
        }
        product(kTrans, ny, nm, K, 1.0f, static_cast<const float*>(x->data) + y0 * K, K,
                static_cast<const float*>(w->data) + m0 * K, K, b != nullptr ? 1.0f : 0.0f, y, M);
    }
}

// A weight [K, N] (f32 or f16, contiguous rows) packed for the AMX kernel: threads take blocks of 16 columns.
void pack_weight_columns(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* w = dst->src[0];
    const int64_t K = w->ne[0], N = w->ne[1];
    const int64_t per = ((N + nth - 1) / nth + 15) & ~int64_t(15);
    const int64_t n0 = std::min<int64_t>(N, per * ith), n1 = std::min<int64_t>(N, n0 + per);
    if (n0 < n1) {
        const auto row_stride = static_cast<int64_t>(w->nb[1] / ggml_type_size(w->type));
        amx::pack_b_trans_columns(w->data, w->type == GGML_TYPE_F16, row_stride, K, N, n0, n1,
                                  static_cast<uint16_t*>(dst->data), amx::pad32(N));
    }
}

struct PackedArgs {
    const CancelToken* cancel;
    int64_t M;  // output features (the packed weight's columns)
};

// y [R, M] = x [R, K] w^T for a weight packed by pack_weight_columns: threads split the rows of x in blocks of 32,
// each packs its rows into bf16 in pieces of at most 256 rows (a few ms of work between looks at the token).
void rows_product_packed(ggml_tensor* dst, int ith, int nth, void* userdata) {
    const ggml_tensor* packed = dst->src[0];
    const ggml_tensor* x = dst->src[1];
    const auto* args = static_cast<const PackedArgs*>(userdata);
    const int64_t K = x->ne[0], M = args->M, Np = amx::pad32(M), R = ggml_nelements(x) / K;
    const int64_t per = ((R + nth - 1) / nth + 31) & ~int64_t(31);
    const int64_t r0 = std::min<int64_t>(R, per * ith), r1 = std::min<int64_t>(R, r0 + per);
    const float* b = dst->src[2] != nullptr ? static_cast<const float*>(dst->src[2]->data) : nullptr;
    const int64_t no_shift = 0;
    for (int64_t y0 = r0; y0 < r1; y0 += 256) {
        if (stop_requested(args->cancel)) {
            return;
        }
        const int64_t ny = std::min<int64_t>(256, r1 - y0);
        float* y = static_cast<float*>(dst->data) + y0 * M;
        if (b != nullptr) {
            for (int64_t r = 0; r < ny; r++) {
                std::copy(b, b + M, y + r * M);
            }
        }
        uint16_t* a = amx::scratch(0, amx::packed_a_size(ny, K));
        amx::pack_a(static_cast<const float*>(x->data) + y0 * K, K, ny, K, a);
        amx::gemm_packed(1, &a, static_cast<const uint16_t*>(packed->data), &no_shift, Np, true, ny, M, K, 1.0f,
                         b != nullptr ? 1.0f : 0.0f, y, M);
    }
}

struct F16Args {
    const CancelToken* cancel;
    int64_t channels, width, height;  // f16::Tokens' patch geometry (channels 0: rows of x)
};

// y [R, M] = x [R, K] w^T (or the patches of a 3x3 conv) for an f16 weight on the AVX512-FP16 kernel: threads take
// blocks of 64 tokens in turn (one block is at most a few ms of one core's work between looks at the token); with
// fewer blocks than threads, each thread takes every block for its own share of the weight's rows instead.
void rows_product_f16(ggml_tensor* dst, int ith, int nth, void* userdata) {
    const ggml_tensor* w = dst->src[0];
    const ggml_tensor* x = dst->src[1];
    const auto* args = static_cast<const F16Args*>(userdata);
    const int64_t K = w->ne[0], M = w->ne[1], R = ggml_nelements(dst) / M;
    const float* b = dst->src[2] != nullptr ? static_cast<const float*>(dst->src[2]->data) : nullptr;
    const auto ldw = static_cast<int64_t>(w->nb[1] / sizeof(uint16_t));
    f16::Tokens tokens;
    tokens.x = static_cast<const float*>(x->data);
    tokens.ld = K;
    tokens.channels = args->channels;
    tokens.width = args->width;
    tokens.height = args->height;
    const auto* ws = static_cast<const uint16_t*>(w->data);
    auto* y = static_cast<float*>(dst->data);
    const int64_t plane = args->channels > 0 ? args->width * args->height : 0;  // convs write [W, H, OC, N]
    const int64_t blocks = (R + f16::kBlockTokens - 1) / f16::kBlockTokens;
    int64_t m0 = 0, m1 = M, first = ith, step = nth;
    if (blocks < nth) {
        const int64_t per = ((M + nth - 1) / nth + f16::kTileRows - 1) / f16::kTileRows * f16::kTileRows;
        m0 = std::min(M, per * ith);
        m1 = std::min(M, m0 + per);
        first = 0;
        step = 1;
    }
    for (int64_t blk = first; blk < blocks && m0 < m1; blk += step) {
        if (stop_requested(args->cancel)) {
            return;
        }
        const int64_t t0 = blk * f16::kBlockTokens;
        const f16::Output out{y + m0 * (plane > 0 ? plane : 1), M, plane};
        f16::product_block(tokens, ws + m0 * ldw, ldw, b != nullptr ? b + m0 : nullptr, out, t0,
                           std::min(f16::kBlockTokens, R - t0), m1 - m0, K);
    }
}

// Rows of a weight [K, M] of any type with a to_float (f32, quantized, bf16) as f16, threads splitting the rows: one
// pass, where two ggml_casts (ggml converts quantized rows to f32 only) would write and read an f32 copy too, and
// vectorized (ggml's scalar f32 -> f16 row converter ran the SD1.5 UNet's q8_0 weights at ~1.4 s per pass).
void rows_to_f16(ggml_tensor* dst, int ith, int nth, void*) {
    const ggml_tensor* w = dst->src[0];
    const int64_t K = w->ne[0], M = ggml_nrows(w);
    const auto to_float = ggml_get_type_traits(w->type)->to_float;
    const int64_t per = (M + nth - 1) / nth;
    thread_local std::vector<float> row;
    row.resize(static_cast<size_t>(K));
    for (int64_t m = per * ith; m < std::min(M, per * (ith + 1)); m++) {
        const char* src = static_cast<const char*>(w->data) + m * w->nb[1];
        auto* out = static_cast<uint16_t*>(dst->data) + m * K;
        if (w->type == GGML_TYPE_Q8_0) {
            f16::q8_0_to_f16_row(src, out, K);
        } else if (w->type == GGML_TYPE_F32) {
            f16::f32_to_f16_row(reinterpret_cast<const float*>(src), out, K);
        } else {
            to_float(src, row.data(), K);
            f16::f32_to_f16_row(row.data(), out, K);
        }
    }
}

}  // namespace

ggml_tensor* mul_mat_bf16(ggml_context* ctx, ggml_tensor* w, ggml_tensor* x, ggml_tensor* bias,
                          const CancelToken* cancel) {
    const int64_t K = w->ne[0], M = w->ne[1];
    ggml_tensor* packed = ggml_custom_4d(ctx, GGML_TYPE_I16, 2 * amx::pad32(M), amx::pad32(K) / 2, 1, 1, &w, 1,
                                         pack_weight_columns, GGML_N_TASKS_MAX, nullptr);
    ggml_set_name(packed, "weight.to_bf16");
    ggml_tensor* args[] = {packed, x, bias};
    PackedArgs* params = custom_op_args(ctx, PackedArgs{cancel, M});
    return ggml_custom_4d(ctx, GGML_TYPE_F32, M, x->ne[1], x->ne[2], x->ne[3], args, bias ? 3 : 2,
                          rows_product_packed, GGML_N_TASKS_MAX, params);
}

ggml_tensor* to_f16(ggml_context* ctx, ggml_tensor* w) {
    return ggml_custom_4d(ctx, GGML_TYPE_F16, w->ne[0], w->ne[1], w->ne[2], w->ne[3], &w, 1, rows_to_f16,
                          GGML_N_TASKS_MAX, nullptr);
}

ggml_tensor* mul_mat_f16(ggml_context* ctx, ggml_tensor* w, ggml_tensor* x, ggml_tensor* bias,
                         const CancelToken* cancel) {
    ggml_tensor* args[] = {w, x, bias};
    F16Args* params = custom_op_args(ctx, F16Args{cancel, 0, 0, 0});
    return ggml_custom_4d(ctx, GGML_TYPE_F32, w->ne[1], x->ne[1], x->ne[2], x->ne[3], args, bias ? 3 : 2,
                          rows_product_f16, GGML_N_TASKS_MAX, params);
}

ggml_tensor* conv3x3_f16(ggml_context* ctx, ggml_tensor* xp, ggml_tensor* w, ggml_tensor* bias,
                         const CancelToken* cancel) {
    const int64_t W = xp->ne[0] - 2, H = xp->ne[1] - 2, C = xp->ne[2], N = xp->ne[3];
    ggml_tensor* args[] = {w, xp, bias};
    F16Args* params = custom_op_args(ctx, F16Args{cancel, C, W, H});
    return ggml_custom_4d(ctx, GGML_TYPE_F32, W, H, w->ne[1], N, args, bias ? 3 : 2, rows_product_f16,
                          GGML_N_TASKS_MAX, params);
}

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

// Output channels [o0, o1) of one image, in bands of output rows whose accumulator stays within ~4 MiB.
void conv3x3_channels(ggml_tensor* dst, int ith, int nth, void* userdata) {
    const auto* args = static_cast<const OpArgs*>(userdata);
    const CancelToken* cancel = args->cancel;
    const ggml_tensor* xp = dst->src[0];
    const ggml_tensor* taps = dst->src[1];
    const int64_t Wp = xp->ne[0], Hp = xp->ne[1], C = xp->ne[2], N = xp->ne[3];
    const int64_t W = dst->ne[0], H = dst->ne[1], OC = dst->ne[2];
    // Threads split the output channels in blocks of 16; when there are fewer blocks than threads (a VAE's
    // 3-channel conv_out), the leftover threads split the output rows of each block instead.
    const int64_t oc_parts = std::max<int64_t>(1, std::min<int64_t>(nth, (OC + 15) / 16));
    const int64_t row_parts = std::max<int64_t>(1, nth / oc_parts);
    const int64_t oc_part = ith % oc_parts, row_part = ith / oc_parts;
    const int64_t per = ((OC + oc_parts - 1) / oc_parts + 15) & ~int64_t(15);
    const int64_t o0 = std::min<int64_t>(OC, per * oc_part), o1 = std::min<int64_t>(OC, o0 + per);
    const int64_t rows_per = (H + row_parts - 1) / row_parts;
    const int64_t y_begin = std::min<int64_t>(H, rows_per * row_part), y_end = std::min<int64_t>(H, y_begin + rows_per);
    if (o0 >= o1 || y_begin >= y_end || row_part >= row_parts) {
        return;
    }
    const int64_t band = std::max<int64_t>(1, std::min<int64_t>(H, (int64_t(1) << 20) / ((o1 - o0) * Wp)));
    thread_local std::vector<float> acc;
    acc.resize(static_cast<size_t>((o1 - o0) * band * Wp));
    const float* w = static_cast<const float*>(taps->data);
    // bf16: this thread's taps packed once for AMX; per band, the input plane is packed once and each tap reads it
    // shifted by ky * Wp + kx columns, all nine accumulating in the tiles (one pass over the accumulator).
    const uint16_t* packed_taps[9] = {};
    int64_t shifts[9] = {};
    if (args->bf16) {
        const int64_t size = amx::packed_a_size(o1 - o0, C);
        uint16_t* a = amx::scratch(2, 9 * size);
        for (int t = 0; t < 9; t++) {
            amx::pack_a(w + (t * OC + o0) * C, C, o1 - o0, C, a + t * size);
            packed_taps[t] = a + t * size;
            shifts[t] = (t / 3) * Wp + t % 3;
        }
    }
    const float* bias = dst->src[2] != nullptr ? static_cast<const float*>(dst->src[2]->data) : nullptr;
    for (int64_t n = 0; n < N; n++) {
        const float* plane = static_cast<const float*>(xp->data) + n * C * Hp * Wp;
        for (int64_t y0 = y_begin; y0 < y_end; y0 += band) {
            const int64_t rows = std::min(band, y_end - y0), P = rows * Wp;
            if (bias != nullptr) {
                for (int64_t o = o0; o < o1; o++) {
                    std::fill(acc.data() + (o - o0) * P, acc.data() + (o - o0 + 1) * P, bias[o]);
                }
            }
            if (args->bf16) {
                if (stop_requested(cancel)) {  // a band: 9 C multiply-adds per accumulator float (<= 2^20 of them)
                    return;
                }
                const int64_t span = (rows + 2) * Wp + 2;  // input columns the taps read, from row y0
                const int64_t Np = amx::pad32(amx::pad32(P) + 2 * Wp + 2);
                uint16_t* b = amx::scratch(3, amx::packed_b_size(C, Np));
                amx::pack_b_rows(plane + y0 * Wp, Hp * Wp, C, span, b, Np);
                amx::gemm_packed(9, packed_taps, b, shifts, Np, false, o1 - o0, P, C, 1.0f,
                                 bias == nullptr ? 0.0f : 1.0f, acc.data(), P);
            } else {
                for (int t = 0; t < 9; t++) {
                    if (stop_requested(cancel)) {  // a tap: C multiply-adds per accumulator float (<= 2^20 of them)
                        return;
                    }
                    const int ky = t / 3, kx = t % 3;
                    product(kNoTrans, o1 - o0, P, C, 1.0f, w + (t * OC + o0) * C, C, plane + (y0 + ky) * Wp + kx,
                            Hp * Wp, t == 0 && bias == nullptr ? 0.0f : 1.0f, acc.data(), P);
                }
            }
            for (int64_t o = o0; o < o1; o++) {
                float* out = static_cast<float*>(dst->data) + ((n * OC + o) * H + y0) * W;
                const float* a = acc.data() + (o - o0) * P;
                for (int64_t y = 0; y < rows; y++) {
                    std::copy(a + y * Wp, a + y * Wp + W, out + y * W);
                }
            }
        }
    }
}

ggml_tensor* conv3x3(ggml_context* ctx, ggml_tensor* xp, ggml_tensor* taps, ggml_tensor* bias,
                     const CancelToken* cancel, bool bf16) {
    ggml_tensor* args[] = {xp, taps, bias};
    OpArgs* params = custom_op_args(ctx, OpArgs{cancel, bf16 && amx::available()});
    return ggml_custom_4d(ctx, GGML_TYPE_F32, xp->ne[0] - 2, xp->ne[1] - 3, taps->ne[1], xp->ne[3], args,
                          bias ? 3 : 2, conv3x3_channels, GGML_N_TASKS_MAX, params);
}

ggml_tensor* attention(ggml_context* ctx, ggml_tensor* q, ggml_tensor* k, ggml_tensor* v, int heads,
                       const CancelToken* cancel, bool bf16) {
    ggml_tensor* args[] = {q, k, v};
    AttentionArgs* params = custom_op_args(ctx, AttentionArgs{cancel, heads, bf16 && amx::available()});
    return ggml_custom_4d(ctx, GGML_TYPE_F32, q->ne[0], q->ne[1], q->ne[2], 1, args, 3, attention_blocks,
                          GGML_N_TASKS_MAX, params);
}

double flops(const ggml_tensor* node) {
    if (node->op != GGML_OP_CUSTOM) {
        return 0.0;
    }
    // ggml_custom_4d stores its parameters in op_params, the function pointer first (ggml-impl.h).
    ggml_custom_op_t fun = nullptr;
    std::memcpy(&fun, node->op_params, sizeof(fun));
    const double out = static_cast<double>(ggml_nelements(node));
    if (fun == rows_product_f16) {
        return 2.0 * static_cast<double>(node->src[0]->ne[0]) * out;  // a conv's K is 9x its input channels
    }
    if (fun == rows_product || fun == rows_product_packed) {
        return 2.0 * static_cast<double>(node->src[1]->ne[0]) * out;
    }
    if (fun == conv3x3_channels) {
        return 2.0 * 9.0 * static_cast<double>(node->src[0]->ne[2]) * out;
    }
    if (fun == attention_blocks) {
        return 4.0 * out * static_cast<double>(node->src[1]->ne[1]);
    }
    return 0.0;
}

ggml_tensor* mul_mat(ggml_context* ctx, ggml_tensor* w, ggml_tensor* x, ggml_tensor* bias, const CancelToken* cancel) {
    ggml_tensor* args[] = {w, x, bias};
    return ggml_custom_4d(ctx, GGML_TYPE_F32, w->ne[1], x->ne[1], x->ne[2], x->ne[3], args, bias ? 3 : 2,
                          rows_product, GGML_N_TASKS_MAX, const_cast<CancelToken*>(cancel));
}

}  // namespace sdcpp::blas
