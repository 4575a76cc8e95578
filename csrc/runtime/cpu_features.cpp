#include "runtime/cpu_features.hpp"

#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#endif

namespace sdcpp::cpu {

bool disabled_by(const char* name) {
    const char* off = std::getenv(name);
    return off != nullptr && *off != '\0' && std::strcmp(off, "0") != 0;
}

#if defined(__x86_64__) && defined(__GNUC__)

bool read_leaf7(Leaf7& out, std::string& reason) {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) {
        reason = "no OSXSAVE";
        return false;
    }
    if (!__get_cpuid_count(7, 0, &a, &out.ebx, &out.ecx, &out.edx)) {
        reason = "no cpuid leaf 7";
        return false;
    }
    if (!__get_cpuid_count(7, 1, &out.eax1, &b, &c, &d)) {
        out.eax1 = 0;
    }
    return true;
}

bool os_enables(unsigned mask) {
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return (lo & mask) == mask;
}

#else

bool read_leaf7(Leaf7&, std::string& reason) {
    reason = "not an x86-64 build";
    return false;
}

bool os_enables(unsigned) { return false; }

#endif

}  // namespace sdcpp::cpu
