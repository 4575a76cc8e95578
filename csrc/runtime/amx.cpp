#include "runtime/amx.hpp"

#include "runtime/cpu_features.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <vector>

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define SDCPP_AMX_BUILD 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace sdcpp::amx {

int64_t pad32(int64_t n) { return (n + 31) & ~int64_t(31); }
int64_t packed_a_size(int64_t M, int64_t K) { return pad32(M) * pad32(K); }
int64_t packed_b_size(int64_t K, int64_t Np) { return pad32(K) * Np; }

uint16_t* scratch(int slot, int64_t n) {
    thread_local std::vector<uint16_t> buffers[5];
    std::vector<uint16_t>& b = buffers[slot];
    if (static_cast<int64_t>(b.size()) < n) {
        b.resize(static_cast<size_t>(n));
    }
    return b.data();
}

namespace {

std::string reason;

#ifdef SDCPP_AMX_BUILD
bool detect() {
    if (cpu::disabled_by("SDCPP_NO_AMX")) {
        reason = "disabled by SDCPP_NO_AMX";
        return false;
    }
    cpu::Leaf7 leaf;
    if (!cpu::read_leaf7(leaf, reason)) {
        return false;
    }
    const bool amx = (leaf.edx & (1u << 22)) && (leaf.edx & (1u << 24));  // AMX-BF16, AMX-TILE
    const bool bf16 = leaf.eax1 & (1u << 5);                              // AVX512-BF16
    if (!leaf.avx512_f_bw_vl() || !amx || !bf16) {
        // AVX512-BF16 alone is not used: its vdpbf16ps ran at half the f32 FMA rate where measured (runtime/peaks.hpp).
        reason = !amx ? "the CPU lacks AMX-TILE / AMX-BF16" : "the CPU lacks AVX-512 BF16";
        return false;
    }
    if (!cpu::os_enables((1u << 1) | (1u << 2) | (7u << 5) | (3u << 17))) {  // SSE, AVX, AVX-512, tile cfg + data
        reason = "the OS does not enable AVX-512 / AMX state";
        return false;
    }
    // Linux keeps AMX tile data disabled until the process asks (ARCH_REQ_XCOMP_PERM for XTILEDATA, feature 18);
    // the grant covers every thread of the process.
    if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) {
        reason = "the kernel refused AMX tile data (arch_prctl)";
        return false;
    }
    return true;
}
#else
bool detect() {
    reason = "not an x86-64 Linux build";
    return false;
}
#endif

}  // namespace

bool available() {
    static std::once_flag once;
    static bool ok = false;
    std::call_once(once, [] { ok = detect(); });
    return ok;
}

std::string unavailable_reason() {
    available();
    return reason;
}

#ifdef SDCPP_AMX_BUILD

// Only the functions below are compiled for AVX-512/AMX (attributes, not file-wide flags: a file-wide -mavx512f
// would let inline library code compiled here replace the portable copies other files use).
#define SDCPP_AMX_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16,amx-tile,amx-bf16")))

namespace {

// Tile configuration (palette 1): every tile 16 rows of 64 bytes. tmm0-3: the 2x2 f32 accumulators of a 32x32
// output block, tmm4-5: two 16-row slices of A, tmm6-7: two 16-column slices of B. A static object, so the
// compiler cannot drop the stores that fill it (the cause of ggml's crash above).
struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {64, 64, 64, 64, 64, 64, 64, 64};
    uint8_t rows[16] = {16, 16, 16, 16, 16, 16, 16, 16};
};
const TileConfig kConfig{};

SDCPP_AMX_TARGET inline __mmask16 first_n(int64_t n) {
    return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// K per block: 32 rows of A for every term within 32 KB, so they stay in L1 while the block's B slices stream from
// L2 (a 2x2 tile kernel loads 1 KB per tile product: both operands from L2 would exceed its bandwidth).
int64_t k_block(int terms) {
    return std::max<int64_t>(32, (512 / terms) & ~int64_t(31));
}

}  // namespace

SDCPP_AMX_TARGET void pack_a(const float* src, int64_t lda, int64_t M, int64_t K, uint16_t* dst) {
    const int64_t Mp = pad32(M), Kp = pad32(K);
    for (int64_t m = 0; m < Mp; m++) {
        uint16_t* out = dst + m * Kp;
        if (m >= M) {
            std::memset(out, 0, static_cast<size_t>(Kp) * sizeof(uint16_t));
            continue;
        }
        const float* row = src + m * lda;
        for (int64_t k = 0; k < Kp; k += 32) {
            const __m512 lo = _mm512_maskz_loadu_ps(first_n(K - k), k < K ? row + k : row);
            const __m512 hi = _mm512_maskz_loadu_ps(first_n(K - k - 16), k + 16 < K ? row + k + 16 : row);
            _mm512_storeu_si512(out + k, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
        }
    }
}

// Rows k, k+1 of a row-major K x N matrix as bf16 pairs, 16 columns at a time, in the blocked or the rows layout.
SDCPP_AMX_TARGET void pack_b_pairs(const float* src, int64_t ld, int64_t K, int64_t N, uint16_t* dst, int64_t Np,
                                   bool blocked) {
    const int64_t Kp = pad32(K);
    uint32_t* units = reinterpret_cast<uint32_t*>(dst);
    for (int64_t kp = 0; kp < Kp / 2; kp++) {
        const int64_t k = 2 * kp;
        const float* r0 = k < K ? src + k * ld : src;
        const float* r1 = k + 1 < K ? src + (k + 1) * ld : src;
        for (int64_t n = 0; n < Np; n += 16) {
            const __mmask16 m0 = k < K ? first_n(N - n) : 0, m1 = k + 1 < K ? first_n(N - n) : 0;
            const __m512 x0 = _mm512_maskz_loadu_ps(m0, m0 ? r0 + n : src);
            const __m512 x1 = _mm512_maskz_loadu_ps(m1, m1 ? r1 + n : src);
            const __m512i lo = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x0));
            const __m512i hi = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(x1));
            uint32_t* out = units + (blocked ? (n / 32 * (Kp / 2) + kp) * 32 + n % 32 : kp * Np + n);
            _mm512_storeu_si512(out, _mm512_or_si512(lo, _mm512_slli_epi32(hi, 16)));
        }
    }
}

void pack_b_rows(const float* src, int64_t ld, int64_t K, int64_t N, uint16_t* dst, int64_t Np) {
    pack_b_pairs(src, ld, K, N, dst, Np, false);
}

void pack_b(const float* src, int64_t ld, int64_t K, int64_t N, uint16_t* dst) {
    pack_b_pairs(src, ld, K, N, dst, pad32(N), true);
}

SDCPP_AMX_TARGET void pack_b_trans_columns(const void* src, bool f16, int64_t ld, int64_t K, int64_t N, int64_t n0,
                                           int64_t n1, uint16_t* dst, int64_t Np) {
    const int64_t Kp = pad32(K);
    uint32_t* units = reinterpret_cast<uint32_t*>(dst);  // unit (kp, n) = bf16 pair (B(2kp, n), B(2kp+1, n))
    const __m512i lanes = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    const __m512i row_step = _mm512_slli_epi32(lanes, 5);  // consecutive kp: 32 units apart within a block
    for (int64_t n = n0; n < n1; n++) {
        for (int64_t k = 0; k < Kp; k += 32) {
            const __mmask16 m0 = first_n(K - k), m1 = first_n(K - k - 16);
            __m512 lo, hi;
            if (f16) {
                const uint16_t* row = static_cast<const uint16_t*>(src) + n * ld;
                lo = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m0, m0 ? row + k : row));
                hi = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m1, m1 ? row + k + 16 : row));
            } else {
                const float* row = static_cast<const float*>(src) + n * ld;
                lo = _mm512_maskz_loadu_ps(m0, m0 ? row + k : row);
                hi = _mm512_maskz_loadu_ps(m1, m1 ? row + k + 16 : row);
            }
            const __m512i pairs = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
            const int64_t first = (n / 32 * (Kp / 2) + k / 2) * 32 + n % 32;
            const __m512i index = _mm512_add_epi32(row_step, _mm512_set1_epi32(static_cast<int>(first)));
            _mm512_i32scatter_epi32(units, index, pairs, 4);
        }
    }
    if (n1 == N) {
        for (int64_t n = N; n < Np; n++) {  // padding columns
            for (int64_t kp = 0; kp < Kp / 2; kp++) {
                units[(n / 32 * (Kp / 2) + kp) * 32 + n % 32] = 0;
            }
        }
    }
}

void pack_b_trans(const float* src, int64_t ld, int64_t K, int64_t N, uint16_t* dst, int64_t Np) {
    pack_b_trans_columns(src, false, ld, K, N, 0, N, dst, Np);
}

SDCPP_AMX_TARGET void gemm_packed(int terms, const uint16_t* const* a, const uint16_t* b, const int64_t* b_shift,
                                  int64_t Np, bool blocked, int64_t M, int64_t N, int64_t K, float alpha, float beta,
                                  float* C, int64_t ldc) {
    const int64_t Mp = pad32(M), Kp = pad32(K), Nb = pad32(N);
    // Bytes per tile row: A rows; B rows of the block (blocked: 32 pairs) or of the whole matrix; the sums.
    const int64_t a_stride = Kp * 2, b_stride = blocked ? 128 : Np * 4, acc_stride = Nb * 4;
    const int64_t Kb = k_block(terms);
    // The f32 sums of one block of 32 output rows, kept across K blocks.
    float* acc = reinterpret_cast<float*>(scratch(4, 2 * 32 * Nb));
    _tile_loadconfig(&kConfig);
    for (int64_t m0 = 0; m0 < Mp; m0 += 32) {
        for (int64_t k0 = 0; k0 < Kp; k0 += Kb) {
            const int64_t k1 = std::min(Kp, k0 + Kb);
            for (int64_t n0 = 0; n0 < Nb; n0 += 32) {
                float* c = acc + n0;
                if (k0 == 0) {
                    _tile_zero(0);
                    _tile_zero(1);
                    _tile_zero(2);
                    _tile_zero(3);
                } else {
                    _tile_loadd(0, c, acc_stride);
                    _tile_loadd(1, c + 16, acc_stride);
                    _tile_loadd(2, c + 16 * Nb, acc_stride);
                    _tile_loadd(3, c + 16 * Nb + 16, acc_stride);
                }
                for (int t = 0; t < terms; t++) {
                    const uint16_t* a0 = a[t] + m0 * Kp;
                    const uint16_t* a1 = a0 + 16 * Kp;
                    const uint16_t* bt = blocked ? b + n0 / 32 * (Kp / 2) * 64 : b + (n0 + b_shift[t]) * 2;
                    for (int64_t k = k0; k < k1; k += 32) {
                        const uint16_t* bk = bt + k * (blocked ? 32 : Np);  // (k / 2) rows of 32 or Np pairs
                        _tile_loadd(4, a0 + k, a_stride);
                        _tile_loadd(5, a1 + k, a_stride);
                        _tile_loadd(6, bk, b_stride);
                        _tile_loadd(7, bk + 32, b_stride);
                        _tile_dpbf16ps(0, 4, 6);
                        _tile_dpbf16ps(1, 4, 7);
                        _tile_dpbf16ps(2, 5, 6);
                        _tile_dpbf16ps(3, 5, 7);
                    }
                }
                _tile_stored(0, c, acc_stride);
                _tile_stored(1, c + 16, acc_stride);
                _tile_stored(2, c + 16 * Nb, acc_stride);
                _tile_stored(3, c + 16 * Nb + 16, acc_stride);
            }
        }
        const int64_t rows = std::min<int64_t>(32, M - m0);
        for (int64_t i = 0; i < rows; i++) {
            float* out = C + (m0 + i) * ldc;
            const float* s = acc + i * Nb;
            if (beta == 0.0f) {
                for (int64_t j = 0; j < N; j++) {
                    out[j] = alpha * s[j];
                }
            } else {
                for (int64_t j = 0; j < N; j++) {
                    out[j] = alpha * s[j] + beta * out[j];
                }
            }
        }
    }
    _tile_release();
}

#else  // no AMX in this build: available() is false and callers never get here

void pack_a(const float*, int64_t, int64_t, int64_t, uint16_t*) { throw std::logic_error("AMX unavailable"); }
void pack_b_trans(const float*, int64_t, int64_t, int64_t, uint16_t*, int64_t) {
    throw std::logic_error("AMX unavailable");
}
void pack_b_trans_columns(const void*, bool, int64_t, int64_t, int64_t, int64_t, int64_t, uint16_t*, int64_t) {
    throw std::logic_error("AMX unavailable");
}
void pack_b_rows(const float*, int64_t, int64_t, int64_t, uint16_t*, int64_t) {
    throw std::logic_error("AMX unavailable");
}
void pack_b(const float*, int64_t, int64_t, int64_t, uint16_t*) { throw std::logic_error("AMX unavailable"); }
void gemm_packed(int, const uint16_t* const*, const uint16_t*, const int64_t*, int64_t, bool, int64_t, int64_t,
                 int64_t, float, float, float*, int64_t) {
    throw std::logic_error("AMX unavailable");
}

#endif

void gemm(bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc) {
    const int64_t Np = pad32(N);
    uint16_t* a = scratch(0, packed_a_size(M, K));
    uint16_t* b = scratch(1, packed_b_size(K, Np));
    pack_a(A, lda, M, K, a);
    if (trans_b) {
        pack_b_trans(B, ldb, K, N, b, Np);
    } else {
        pack_b(B, ldb, K, N, b);
    }
    const int64_t no_shift = 0;
    gemm_packed(1, &a, b, &no_shift, Np, true, M, N, K, alpha, beta, C, ldc);
}

}  // namespace sdcpp::amx
