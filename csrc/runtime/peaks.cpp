#include "runtime/peaks.hpp"

#include <chrono>

namespace sdcpp::peaks {

#if defined(__x86_64__) && defined(__GNUC__)

namespace {

// Twelve accumulators, each updated once per iteration from the same two registers: enough independent chains to
// cover the latency of every instruction measured, and inline asm so the compiler cannot merge the identical
// chains (it did, with intrinsics: one instruction per iteration, a twelfth of the work counted).
#define SDCPP_TWELVE(OP, REG)                                                                                        \
    __asm__ volatile(OP " %12, %13, %0\n\t" OP " %12, %13, %1\n\t" OP " %12, %13, %2\n\t" OP " %12, %13, %3\n\t" OP \
                        " %12, %13, %4\n\t" OP " %12, %13, %5\n\t" OP " %12, %13, %6\n\t" OP " %12, %13, %7\n\t" OP \
                        " %12, %13, %8\n\t" OP " %12, %13, %9\n\t" OP " %12, %13, %10\n\t" OP " %12, %13, %11"      \
                     : "+" REG(c0), "+" REG(c1), "+" REG(c2), "+" REG(c3), "+" REG(c4), "+" REG(c5), "+" REG(c6),    \
                       "+" REG(c7), "+" REG(c8), "+" REG(c9), "+" REG(c10), "+" REG(c11)                              \
                     : REG(a), REG(b))

using Clock = std::chrono::steady_clock;

// Runs `body` (one iteration = 12 instructions of `flops` each) in batches until `seconds` passed; GFLOP/s.
template <class Body>
double time_loop(double seconds, double flops, Body body) {
    const auto start = Clock::now();
    long iterations = 0;
    double elapsed = 0.0;
    do {
        body(100000);
        iterations += 100000;
        elapsed = std::chrono::duration<double>(Clock::now() - start).count();
    } while (elapsed < seconds);
    return iterations * 12.0 * flops / elapsed / 1e9;
}


__attribute__((target("avx2,fma"))) double f32_avx2(double seconds) {
    typedef float v8 __attribute__((vector_size(32)));
    v8 c0 = {}, c1 = {}, c2 = {}, c3 = {}, c4 = {}, c5 = {}, c6 = {}, c7 = {}, c8 = {}, c9 = {}, c10 = {}, c11 = {};
    v8 a = {}, b = {};
    return time_loop(seconds, 16.0, [&](long n) {
        for (long i = 0; i < n; i++) {
            SDCPP_TWELVE("vfmadd231ps", "x");
        }
    });
}

// One zmm type for the three AVX-512 loops: the asm operands only need a 512-bit register.
typedef float v16 __attribute__((vector_size(64)));

__attribute__((target("avx512f"))) double f32_avx512(double seconds) {
    v16 c0 = {}, c1 = {}, c2 = {}, c3 = {}, c4 = {}, c5 = {}, c6 = {}, c7 = {}, c8 = {}, c9 = {}, c10 = {}, c11 = {};
    v16 a = {}, b = {};
    return time_loop(seconds, 32.0, [&](long n) {
        for (long i = 0; i < n; i++) {
            SDCPP_TWELVE("vfmadd231ps", "v");
        }
    });
}

__attribute__((target("avx512f,avx512bf16"))) double bf16_avx512(double seconds) {
    v16 c0 = {}, c1 = {}, c2 = {}, c3 = {}, c4 = {}, c5 = {}, c6 = {}, c7 = {}, c8 = {}, c9 = {}, c10 = {}, c11 = {};
    v16 a = {}, b = {};
    return time_loop(seconds, 64.0, [&](long n) {  // 32 bf16 multiply-adds per instruction
        for (long i = 0; i < n; i++) {
            SDCPP_TWELVE("vdpbf16ps", "v");
        }
    });
}

__attribute__((target("avx512f,avx512fp16"))) double f16_avx512(double seconds) {
    v16 c0 = {}, c1 = {}, c2 = {}, c3 = {}, c4 = {}, c5 = {}, c6 = {}, c7 = {}, c8 = {}, c9 = {}, c10 = {}, c11 = {};
    v16 a = {}, b = {};  // zero f16 lanes: no denormals or infinities slow the loop
    return time_loop(seconds, 64.0, [&](long n) {  // 32 f16 lanes
        for (long i = 0; i < n; i++) {
            SDCPP_TWELVE("vfmadd231ph", "v");
        }
    });
}

}  // namespace

std::map<std::string, double> instruction_peaks(double seconds) {
    // __builtin_cpu_supports also checks that the OS saves the AVX / AVX-512 state (libgcc reads XCR0).
    __builtin_cpu_init();
    std::map<std::string, double> out;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        out["f32_fma_avx2"] = f32_avx2(seconds);
    }
    if (__builtin_cpu_supports("avx512f")) {
        out["f32_fma_avx512"] = f32_avx512(seconds);
        if (__builtin_cpu_supports("avx512bf16")) {
            out["bf16_dot_avx512"] = bf16_avx512(seconds);
        }
        if (__builtin_cpu_supports("avx512fp16")) {
            out["f16_fma_avx512"] = f16_avx512(seconds);
        }
    }
    return out;
}

#else

std::map<std::string, double> instruction_peaks(double) { return {}; }

#endif

}  // namespace sdcpp::peaks
