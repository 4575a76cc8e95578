// bf16 matrix products on Intel AMX (the precision="bf16" path of the CPU's custom ops, runtime/blas.hpp).
//
// Why our own kernel: on the AMX Xeon of this project's machines, ggml 0.20.2's AMX int8 path (its "AMX" extra
// buffer type for q4_0/q8_0/K-quants) crashes in ldtilecfg (an invalid tile configuration; ggml-org/llama.cpp
// #20824, fix proposed in PR #26954), ggml has no bf16 AMX kernel, and PyPI's oneDNN build needs the SYCL and
// Intel compiler runtimes (several hundred MB). One AMX tile instruction multiplies 16x32 by 32x16 bf16 into
// 16x16 f32: ~16x the multiply-adds of an AVX-512 FMA per cycle, which is what OpenVINO's and PyTorch's bf16 run on.
//
// Operands are f32 in and out (the custom ops' layouts); they are rounded to bf16 (nearest even) when packed into
// tile layouts, products accumulate in f32. Everything else (norms, softmax, the timestep embedding, bias adds)
// stays f32. The code is compiled for AMX with function-level target attributes, so the library still loads and
// runs on CPUs without it: available() decides at run time, and nothing here may be called when it is false.
#pragma once

#include <cstdint>
#include <string>

namespace sdcpp::amx {

// The CPU has AMX-TILE, AMX-BF16 and AVX512-BF16, the OS enables tile state and granted this process tile data
// (arch_prctl), and SDCPP_NO_AMX is unset. Checked once.
bool available();
// Why available() is false ("" when true), for system-info.
std::string unavailable_reason();

// Packed operands. A (the left matrix, M x K) is row-major bf16 with rows padded to 32 and K to 32 (zeros).
// B (the right matrix, K x N) holds pairs of consecutive k for each column ("VNNI", what AMX reads), in one of two
// layouts: blocked, [N/32][Kp/2][32][2] (each block of 32 columns contiguous, so a tile load reads 2 KB in a row:
// the layout of weights and of gemm()), or rows, [Kp/2][Np][2] with N padded to Np (any column offset is a view:
// the conv taps' shifted reads; each tile row of a load is a different page for large Np, which costs TLB misses).
int64_t pad32(int64_t n);
// Elements (uint16) of the packed A / B of an M x K / K x N operand (Np = pad32(N) when blocked).
int64_t packed_a_size(int64_t M, int64_t K);
int64_t packed_b_size(int64_t K, int64_t Np);

// A(m, k) = src[m * lda + k].
void pack_a(const float* src, int64_t lda, int64_t M, int64_t K, uint16_t* dst);
// Blocked B(k, n) = src[n * ld + k] (B transposed in memory, as a weight [N, K] or a key matrix); Np = pad32(N).
void pack_b_trans(const float* src, int64_t ld, int64_t K, int64_t N, uint16_t* dst, int64_t Np);
// Columns [n0, n1) of the same from a weight stored as N rows of K f32 or f16 (`f16`) values, row stride `ld`
// elements: threads pack disjoint column ranges; the range ending at N also zeroes the padding columns.
void pack_b_trans_columns(const void* src, bool f16, int64_t ld, int64_t K, int64_t N, int64_t n0, int64_t n1,
                          uint16_t* dst, int64_t Np);
// Blocked B(k, n) = src[k * ld + n] (row-major K x N).
void pack_b(const float* src, int64_t ld, int64_t K, int64_t N, uint16_t* dst);
// Rows layout of the same, Np >= pad32(N) columns (zeros beyond N).
void pack_b_rows(const float* src, int64_t ld, int64_t K, int64_t N, uint16_t* dst, int64_t Np);

// C[M, N] (row-major, ldc) = alpha * sum_t A_t B_t + (beta != 0 ? beta * C : 0), with every A_t packed from M x K
// and B_t = the packed B (`blocked`, or rows of Np) starting `b_shift[t]` columns in (rows layout only: a conv tap
// reads the same packed plane shifted), all with the same K. Terms accumulate in the tiles.
void gemm_packed(int terms, const uint16_t* const* a, const uint16_t* b, const int64_t* b_shift, int64_t Np,
                 bool blocked, int64_t M, int64_t N, int64_t K, float alpha, float beta, float* C, int64_t ldc);

// An sgemm of row-major f32 operands (A not transposed; B transposed when trans_b) on the kernels above, packing
// into this thread's scratch buffers.
void gemm(bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc);

// This thread's scratch buffer `slot` (0..4; gemm_packed uses 4) of at least n elements (grows, never shrinks).
uint16_t* scratch(int slot, int64_t n);

}  // namespace sdcpp::amx
