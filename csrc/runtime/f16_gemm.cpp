#include "runtime/f16_gemm.hpp"

#include "runtime/cpu_features.hpp"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#define SDCPP_F16_BUILD 1
#include <immintrin.h>
#endif

namespace sdcpp::f16 {

namespace {

std::string reason;

bool detect() {
    if (cpu::disabled_by("SDCPP_NO_F16")) {
        reason = "disabled by SDCPP_NO_F16";
        return false;
    }
    cpu::Leaf7 leaf;
    if (!cpu::read_leaf7(leaf, reason)) {
        return false;
    }
    const bool avx512 = leaf.avx512_f_bw_vl();
    if (!avx512 || !(leaf.edx & (1u << 23))) {  // AVX512-FP16
        reason = !avx512 ? "the CPU lacks AVX-512 F/BW/VL" : "the CPU lacks AVX512-FP16";
        return false;
    }
    if (!cpu::os_enables((1u << 1) | (1u << 2) | (7u << 5))) {  // SSE, AVX, AVX-512 state
        reason = "the OS does not enable AVX-512 state";
        return false;
    }
    return true;
}

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

#ifdef SDCPP_F16_BUILD

// Only these functions are compiled for AVX512-FP16 (attributes, not file-wide flags: see runtime/amx.cpp).
#define SDCPP_F16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512fp16")))

namespace {

// Weight rows per register tile: ROWS x 32 tokens of f16 sums (2 zmm per row) plus two operand registers.
constexpr int kRows = static_cast<int>(kTileRows);
constexpr int64_t kTileTokens = 32;

int64_t pairs16(int64_t K) { return ((K + 1) / 2 + 15) & ~int64_t(15); }

// Packed activations of one block: for each pair of k (q) and token t, one 32-bit word holding the f16 values of
// k = 2q and 2q + 1 ([pairs16(K)][kBlockTokens] words), so one vbroadcastss of a weight pair (a plain load, where
// a 16-bit broadcast also takes a shuffle port the multiply-adds need) feeds every lane: even lanes sum the even k,
// odd lanes the odd k, and the two are added in f32 at the end.
struct Scratch {
    std::vector<uint32_t> packed;
};

Scratch& scratch() {
    thread_local Scratch s;
    return s;
}

SDCPP_F16_TARGET inline __mmask16 first_n(int64_t n) {
    return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1);
}

// out[j] = column j of the 16 x 16 matrix of 32-bit words in r (three rounds of lane shuffles).
SDCPP_F16_TARGET inline void transpose16(__m512i r[16]) {
    __m512i t[16], u[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // u[4i + c], 128-bit lane L: column 4L + c of rows 4i..4i+3.
    for (int i = 0; i < 4; i++) {
        u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (int c = 0; c < 4; c++) {
        const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
        const __m512i w0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44);
        const __m512i w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
        r[c] = _mm512_shuffle_i32x4(v0, w0, 0x88);
        r[4 + c] = _mm512_shuffle_i32x4(v0, w0, 0xDD);
        r[8 + c] = _mm512_shuffle_i32x4(v1, w1, 0x88);
        r[12 + c] = _mm512_shuffle_i32x4(v1, w1, 0xDD);
    }
}

// Packs rows [t0, t0 + n), n <= kBlockTokens, of x into `packed` (zeros for the tokens past n and the k past K)
// and writes the factor undoing each token's scale into inv.
SDCPP_F16_TARGET void pack_rows(const Tokens& x, int64_t t0, int64_t n, int64_t K, Scratch& s, float* inv) {
    const int64_t Q = pairs16(K);
    s.packed.resize(static_cast<size_t>(Q * kBlockTokens));
    for (int64_t g = 0; g < kBlockTokens; g += 16) {
        // The 16 tokens' maxima side by side: 16 independent chains of vmaxps instead of one (4 cycles a link).
        // Tokens past n read row 0 again (their maxima are not used).
        const float* src_rows[16];
        for (int64_t j = 0; j < 16; j++) {
            src_rows[j] = x.x + (t0 + (g + j < n ? g + j : 0)) * x.ld;
        }
        __m512 peaks[16];
        for (auto& p : peaks) {
            p = _mm512_setzero_ps();
        }
        for (int64_t k = 0; k < K; k += 16) {
            const __mmask16 mask = first_n(K - k);
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++) {
                peaks[j] = _mm512_max_ps(peaks[j], _mm512_abs_ps(_mm512_maskz_loadu_ps(mask, src_rows[j] + k)));
            }
        }
        __m512 scales[16];
        for (int64_t j = 0; j < 16; j++) {
            const int64_t t = g + j;
            const float m = _mm512_reduce_max_ps(peaks[j]);
            // A power of two: scaling is exact, and |x| * scale <= 1 keeps every f16 sum of kF16Terms small products
            // far from the f16 limit (65504). Zero and non-finite rows keep scale 1; tokens past n get 0 (zeros).
            float f = t < n ? 1.0f : 0.0f, undo = 1.0f;
            uint32_t bits;
            std::memcpy(&bits, &m, sizeof(bits));
            const uint32_t E = bits >> 23;  // biased exponent (m >= 0): m in [2^(E-127), 2^(E-126))
            if (t >= n) {
            } else if (E >= 1 && E <= 252) {  // 2^(126-E) and 2^(E-126) are normal floats: build them from bits
                bits = (253 - E) << 23;
                std::memcpy(&f, &bits, sizeof(f));
                bits = (E + 1) << 23;
                std::memcpy(&undo, &bits, sizeof(undo));
            } else if (m > 0.0f && std::isfinite(m)) {  // subnormal or huge maxima (rare): the library's way
                int e = 0;
                std::frexp(m, &e);
                f = std::ldexp(1.0f, -e);
                undo = std::ldexp(1.0f, e);
            }
            scales[j] = _mm512_set1_ps(f);
            inv[t] = undo;
        }
        // 32 k of the 16 tokens at a time, rounded to f16 in registers (16 words per token), then transposed so
        // tokens become columns: no buffer between the passes, so the working set stays in L1 whatever K is.
        for (int64_t q0 = 0; q0 < Q; q0 += 16) {
            const int64_t k0 = 2 * q0;
            const __mmask16 lo_mask = first_n(K - k0), hi_mask = first_n(K - k0 - 16);
            const int64_t lo_at = std::min(k0, K), hi_at = std::min(k0 + 16, K);
            __m512i r[16];
#pragma GCC unroll 16
            for (int j = 0; j < 16; j++) {
                const __m512 lo = _mm512_mul_ps(_mm512_maskz_loadu_ps(lo_mask, src_rows[j] + lo_at), scales[j]);
                const __m512 hi = _mm512_mul_ps(_mm512_maskz_loadu_ps(hi_mask, src_rows[j] + hi_at), scales[j]);
                constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
                r[j] = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtps_ph(lo, kRound)),
                                          _mm512_cvtps_ph(hi, kRound), 1);
            }
            transpose16(r);
            for (int i = 0; i < 16; i++) {
                _mm512_storeu_si512(s.packed.data() + (q0 + i) * kBlockTokens + g, r[i]);
            }
        }
    }
}

// Packs the 3x3 patches of tokens [t0, t0 + n) (Tokens with channels > 0; t0 and n multiples of 16) into
// `packed`: 16 tokens are 16 adjacent pixels of one output row, so value(t, k) of all 16 is one vector load per k,
// already in the packed layout's token order (no transpose). Scales as pack_rows, per lane.
SDCPP_F16_TARGET void pack_patches(const Tokens& x, int64_t t0, int64_t n, int64_t K, Scratch& s, float* inv) {
    const int64_t Q = pairs16(K);
    s.packed.resize(static_cast<size_t>(Q * kBlockTokens));
    const int64_t W = x.width, H = x.height, row = W + 2, plane = row * (H + 2);
    const int64_t tap_at[9] = {0, 1, 2, row, row + 1, row + 2, 2 * row, 2 * row + 1, 2 * row + 2};
    for (int64_t g = 0; g < kBlockTokens; g += 16) {
        uint32_t* out = s.packed.data() + g;
        if (g >= n) {
            for (int64_t q = 0; q < Q; q++) {
                _mm512_storeu_si512(out + q * kBlockTokens, _mm512_setzero_si512());
            }
            for (int j = 0; j < 16; j++) {
                inv[g + j] = 1.0f;
            }
            continue;
        }
        const int64_t t = t0 + g, ox = t % W, oy = t / W % H, image = t / (W * H);
        const float* base = x.x + image * x.channels * plane + oy * row + ox;
        __m512 peak[3] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
        for (int64_t c = 0; c < x.channels; c++) {
            const float* p = base + c * plane;
            for (int ky = 0; ky < 3; ky++) {  // three chains: a vmaxps takes 4 cycles
                peak[ky] = _mm512_max_ps(peak[ky], _mm512_abs_ps(_mm512_loadu_ps(p + ky * row)));
                peak[ky] = _mm512_max_ps(peak[ky], _mm512_abs_ps(_mm512_loadu_ps(p + ky * row + 1)));
                peak[ky] = _mm512_max_ps(peak[ky], _mm512_abs_ps(_mm512_loadu_ps(p + ky * row + 2)));
            }
        }
        const __m512 m = _mm512_max_ps(peak[0], _mm512_max_ps(peak[1], peak[2]));
        // 2^-(e+1) for m in [2^e, 2^(e+1)): the largest scaled value is below 1; exponents clamped to normal floats,
        // and lanes whose maximum is 0 or not finite keep 1.
        const __m512 e = _mm512_add_ps(_mm512_getexp_ps(m), _mm512_set1_ps(1.0f));
        const __m512 clamped = _mm512_min_ps(_mm512_max_ps(e, _mm512_set1_ps(-126.0f)), _mm512_set1_ps(126.0f));
        const __mmask16 usable = _mm512_cmp_ps_mask(m, _mm512_setzero_ps(), _CMP_GT_OQ) &
                                 _mm512_cmp_ps_mask(m, _mm512_set1_ps(3.0e38f), _CMP_LE_OQ);
        const __m512 one = _mm512_set1_ps(1.0f);
        const __m512 scale = _mm512_mask_scalef_ps(one, usable, one, _mm512_sub_ps(_mm512_setzero_ps(), clamped));
        _mm512_storeu_ps(inv + g, _mm512_mask_scalef_ps(one, usable, one, clamped));
        const __m512i order = _mm512_set_epi64(7, 6, 3, 2, 5, 4, 1, 0);
        constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
        int64_t c = 0, tap = 0;  // of k = 2q; k + 1 follows
        for (int64_t q = 0; q < (K + 1) / 2; q++) {
            const float* pa = base + c * plane + tap_at[tap];
            if (++tap == 9) {
                tap = 0;
                c++;
            }
            const bool last = 2 * q + 1 == K;  // an odd K's last k pairs with a zero
            const float* pb = last ? pa : base + c * plane + tap_at[tap];
            if (++tap == 9) {
                tap = 0;
                c++;
            }
            const __m256i ha = _mm512_cvtps_ph(_mm512_mul_ps(_mm512_loadu_ps(pa), scale), kRound);
            const __m256i hb = last ? _mm256_setzero_si256()
                                    : _mm512_cvtps_ph(_mm512_mul_ps(_mm512_loadu_ps(pb), scale), kRound);
            // words (a_j, b_j): unpack works within 128-bit lanes, the permute puts the four quarters in order
            const __m512i both = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_unpacklo_epi16(ha, hb)),
                                                    _mm256_unpackhi_epi16(ha, hb), 1);
            _mm512_storeu_si512(out + q * kBlockTokens, _mm512_permutexvar_epi64(order, both));
        }
        for (int64_t q = (K + 1) / 2; q < Q; q++) {
            _mm512_storeu_si512(out + q * kBlockTokens, _mm512_setzero_si512());
        }
    }
}

SDCPP_F16_TARGET inline __m512h pair_of(const uint16_t* w, int64_t q) {
    uint32_t v;
    std::memcpy(&v, w + 2 * q, sizeof(v));
    return _mm512_castsi512_ph(_mm512_set1_epi32(static_cast<int>(v)));
}

// acc (f16 sums) added into f32 sums: row r's words h*16.. of the tile are buf[r*64 + h*32 ..] (even, odd k).
SDCPP_F16_TARGET inline void flush(const __m512h acc[kRows][2], float* buf) {
    for (int r = 0; r < kRows; r++) {
        for (int h = 0; h < 2; h++) {
            const __m512i bits = _mm512_castph_si512(acc[r][h]);
            float* b = buf + r * 64 + h * 32;
            _mm512_store_ps(b, _mm512_add_ps(_mm512_load_ps(b), _mm512_cvtph_ps(_mm512_castsi512_si256(bits))));
            _mm512_store_ps(b + 16,
                            _mm512_add_ps(_mm512_load_ps(b + 16), _mm512_cvtph_ps(_mm512_extracti64x4_epi64(bits, 1))));
        }
    }
}

// f32 sums of kRows weight rows (w[r], K f16 each) with the 32 tokens of `packed` starting at word column `col`,
// in buf as flush() lays them out.
SDCPP_F16_TARGET void tile(const uint16_t* const w[kRows], const uint32_t* packed, int64_t col, int64_t K,
                           float* buf) {
    std::memset(buf, 0, sizeof(float) * kRows * 64);
    const int64_t whole = K / 2;  // pairs inside every row; an odd K's last k is a pair with a zero
    __m512h acc[kRows][2];
    for (int64_t q0 = 0; q0 < whole; q0 += kF16Terms) {
        for (auto& a : acc) {
            a[0] = a[1] = _mm512_setzero_ph();
        }
        const int64_t q1 = std::min<int64_t>(whole, q0 + kF16Terms);
        for (int64_t q = q0; q < q1; q++) {
            const uint32_t* p = packed + q * kBlockTokens + col;
            const __m512h b0 = _mm512_castsi512_ph(_mm512_loadu_si512(p));
            const __m512h b1 = _mm512_castsi512_ph(_mm512_loadu_si512(p + 16));
#pragma GCC unroll 12
            for (int r = 0; r < kRows; r++) {
                const __m512h a = pair_of(w[r], q);
                acc[r][0] = _mm512_fmadd_ph(a, b0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ph(a, b1, acc[r][1]);
            }
        }
        flush(acc, buf);
    }
    if (K % 2 != 0) {
        const uint32_t* p = packed + whole * kBlockTokens + col;
        const __m512h b0 = _mm512_castsi512_ph(_mm512_loadu_si512(p));
        const __m512h b1 = _mm512_castsi512_ph(_mm512_loadu_si512(p + 16));
        for (int r = 0; r < kRows; r++) {
            const __m512h a = _mm512_castsi512_ph(_mm512_set1_epi32(w[r][K - 1]));
            acc[r][0] = _mm512_mul_ph(a, b0);
            acc[r][1] = _mm512_mul_ph(a, b1);
        }
        flush(acc, buf);
    }
}

// The exact f32 result of one tile, for tiles whose f16 sums overflowed.
void tile_f32(const Tokens& x, int64_t t0, const uint16_t* const w[kRows], int rows, const float* bias,
              const Output& y, int64_t m0, int64_t tokens, int64_t K) {
    std::vector<float> wf(static_cast<size_t>(K));
    for (int r = 0; r < rows; r++) {
        for (int64_t k = 0; k < K; k++) {
            _Float16 h;
            std::memcpy(&h, w[r] + k, sizeof(h));
            wf[static_cast<size_t>(k)] = static_cast<float>(h);
        }
        for (int64_t t = 0; t < tokens; t++) {
            float sum = 0.0f;
            for (int64_t k = 0; k < K; k++) {
                sum += x.value(t0 + t, k) * wf[static_cast<size_t>(k)];
            }
            *y.at(t0 + t, m0 + r) = sum + (bias != nullptr ? bias[r] : 0.0f);
        }
    }
}

// 8 x 8 transpose of f32 rows (standard unpack / shuffle / lane-swap rounds).
SDCPP_F16_TARGET inline void transpose8(__m256 r[8]) {
    __m256 t[8], u[8];
    for (int i = 0; i < 4; i++) {
        t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for (int i = 0; i < 2; i++) {
        u[4 * i + 0] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
        u[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
        u[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
        u[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        r[c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x20);
        r[4 + c] = _mm256_permute2f128_ps(u[c], u[4 + c], 0x31);
    }
}

// Results (t + i, m0 + r) of the tile's tokens i < tokens and rows r < rows = (even + odd sums) * inv + bias;
// false (nothing written) when a sum is not finite.
SDCPP_F16_TARGET bool store_tile(const float* buf, const float* inv, const float* bias, int rows, const Output& y,
                                 int64_t t, int64_t m0, int64_t tokens) {
    alignas(64) float sums[(kRows + 7) / 8 * 8][kTileTokens] = {};
    const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
    const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
    __mmask16 bad = 0;
    for (int r = 0; r < kRows; r++) {
        for (int h = 0; h < 2; h++) {
            const __m512 a = _mm512_load_ps(buf + r * 64 + h * 32), b = _mm512_load_ps(buf + r * 64 + h * 32 + 16);
            const __m512 s = _mm512_mul_ps(
                _mm512_add_ps(_mm512_permutex2var_ps(a, even, b), _mm512_permutex2var_ps(a, odd, b)),
                _mm512_loadu_ps(inv + h * 16));
            // s - s is 0 for finite s, NaN for inf and NaN.
            bad |= _mm512_cmp_ps_mask(_mm512_sub_ps(s, s), _mm512_setzero_ps(), _CMP_NEQ_UQ) &
                   (r < rows ? first_n(tokens - h * 16) : __mmask16(0));
            _mm512_store_ps(sums[r] + h * 16, s);
        }
    }
    if (bad != 0) {
        return false;
    }
    if (y.plane > 0) {  // 16 tokens of one image are adjacent: one (masked) vector store per row and half
        for (int r = 0; r < rows; r++) {
            const __m512 bv = _mm512_set1_ps(bias != nullptr ? bias[r] : 0.0f);
            for (int64_t h = 0; h * 16 < tokens; h++) {
                _mm512_mask_storeu_ps(y.at(t + h * 16, m0 + r), first_n(tokens - h * 16),
                                      _mm512_add_ps(_mm512_load_ps(sums[r] + h * 16), bv));
            }
        }
        return true;
    }
    float* out = y.at(t, m0);
    const int64_t ldy = y.ld;
    for (int g = 0; g < rows; g += 8) {  // groups of 8 weight rows: one 8 x 8 transpose per 8 tokens
        const int n = std::min(8, rows - g);
        alignas(32) float b[8] = {};
        for (int r = 0; r < n; r++) {
            b[r] = bias != nullptr ? bias[g + r] : 0.0f;
        }
        const __m256 bv = _mm256_load_ps(b);
        const __mmask8 cols = static_cast<__mmask8>((1u << n) - 1);
        for (int64_t t0 = 0; t0 < tokens; t0 += 8) {
            __m256 c[8];
            for (int r = 0; r < 8; r++) {
                c[r] = _mm256_load_ps(sums[g + r] + t0);
            }
            transpose8(c);
            for (int64_t j = 0; j < 8 && t0 + j < tokens; j++) {
                _mm256_mask_storeu_ps(out + (t0 + j) * ldy + g, cols, _mm256_add_ps(c[j], bv));
            }
        }
    }
    return true;
}

}  // namespace

SDCPP_F16_TARGET void product_block(const Tokens& x, const uint16_t* w, int64_t ldw, const float* bias,
                                    const Output& y, int64_t t0, int64_t n, int64_t M, int64_t K) {
    Scratch& s = scratch();
    alignas(64) float inv[kBlockTokens];
    alignas(64) float buf[kRows * 64];
    if (x.channels > 0) {
        pack_patches(x, t0, n, K, s, inv);
    } else {
        pack_rows(x, t0, n, K, s, inv);
    }
    for (int64_t m0 = 0; m0 < M; m0 += kRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kRows, M - m0));
        const uint16_t* wr[kRows];
        for (int r = 0; r < kRows; r++) {
            wr[r] = w + (m0 + std::min(r, rows - 1)) * ldw;  // a short last group repeats its last row
        }
        const float* b = bias != nullptr ? bias + m0 : nullptr;
        for (int64_t c = 0; c < n; c += kTileTokens) {
            const int64_t tokens = std::min(kTileTokens, n - c);
            tile(wr, s.packed.data(), c, K, buf);
            if (!store_tile(buf, inv + c, b, rows, y, t0 + c, m0, tokens)) {
                tile_f32(x, t0 + c, wr, rows, b, y, m0, tokens, K);
            }
        }
    }
}

SDCPP_F16_TARGET void f32_to_f16_row(const float* src, uint16_t* dst, int64_t n) {
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = first_n(n - i);
        const __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_mask_storeu_epi16(dst + i, m, h);
    }
}

SDCPP_F16_TARGET void q8_0_to_f16_row(const void* src, uint16_t* dst, int64_t n) {
    constexpr int64_t kBlock = 32, kBytes = 2 + kBlock;
    const auto* p = static_cast<const uint8_t*>(src);
    for (int64_t b = 0; b < n / kBlock; b++, p += kBytes) {
        uint16_t d;
        std::memcpy(&d, p, sizeof(d));
        const __m512 scale = _mm512_cvtph_ps(_mm256_set1_epi16(static_cast<short>(d)));
        for (int half = 0; half < 2; half++) {
            const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 2 + 16 * half));
            const __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(q)), scale);
            _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + b * kBlock + 16 * half),
                                _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        }
    }
}

#else

void f32_to_f16_row(const float*, uint16_t*, int64_t) { std::abort(); }
void q8_0_to_f16_row(const void*, uint16_t*, int64_t) { std::abort(); }

void product_block(const Tokens&, const uint16_t*, int64_t, const float*, const Output&, int64_t, int64_t, int64_t,
                   int64_t) {
    std::abort();  // available() is false in such builds
}

#endif

}  // namespace sdcpp::f16
