// The cpuid / XCR0 reads the run-time dispatch of the CPU kernels shares (runtime/amx.cpp, runtime/f16_gemm.cpp).
#pragma once

#include <string>

namespace sdcpp::cpu {

// The environment variable `name` is set to something other than "" or "0" (a kernel's off switch).
bool disabled_by(const char* name);

// cpuid leaf 7 (sub-leaf 0 in ebx/ecx/edx, sub-leaf 1's eax), read when the CPU has OSXSAVE and the leaf.
struct Leaf7 {
    unsigned ebx = 0, ecx = 0, edx = 0, eax1 = 0;
    bool avx512_f_bw_vl() const { return (ebx & (1u << 16)) && (ebx & (1u << 30)) && (ebx & (1u << 31)); }
};
// False (with `reason` set) when it cannot be read; x86-64 only.
bool read_leaf7(Leaf7& out, std::string& reason);

// The OS has enabled every state component of `mask` in XCR0 (xgetbv 0): bits 1-2 SSE/AVX, 5-7 AVX-512,
// 17-18 AMX tile config / data.
bool os_enables(unsigned mask);

}  // namespace sdcpp::cpu
