#include "convert.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "types.hpp"

namespace sdcpp {
namespace {

// f32 scratch per thread (1 MiB), so converting a multi-GB model never needs a
// full-size f32 copy. A single row larger than this still gets a whole-row scratch,
// because a row is the unit that quantizers are guaranteed to treat independently.
constexpr int64_t kScratchFloats = int64_t(1) << 18;

// ggml reads blocks/floats through typed pointers; buffers from memoryview slices may be
// misaligned, in which case each chunk is first copied to (aligned) heap memory.
constexpr uintptr_t kAlign = 16;

struct Job {
    ggml_type src_type;
    ggml_type dst_type;
    const uint8_t* src;
    uint8_t* dst;
    int64_t n_per_row;
    size_t src_row;
    size_t dst_row;
    ggml_to_float_t to_float;  // nullptr for f32 sources
    bool stage_src;
    float max_abs_input;  // see type_max_abs_input()
};

struct Scratch {
    std::unique_ptr<float[]> f32;
    std::unique_ptr<uint8_t[]> staged;
};

// Index of the first value that is NaN or beyond `limit`, or -1.
int64_t find_out_of_range(const float* x, int64_t n, float limit) {
    for (int64_t i = 0; i < n; ++i) {
        if (!(std::fabs(x[i]) <= limit)) {  // negated so NaN counts as out of range
            return i;
        }
    }
    return -1;
}

// Returns false (and writes nothing) if the input would make the quantizer abort.
bool convert_chunk(const Job& job, int64_t row0, int64_t n_rows, Scratch& scratch) {
    const uint8_t* src = job.src + static_cast<size_t>(row0) * job.src_row;
    uint8_t* dst = job.dst + static_cast<size_t>(row0) * job.dst_row;
    const int64_t n = n_rows * job.n_per_row;

    if (job.stage_src) {
        std::memcpy(scratch.staged.get(), src, static_cast<size_t>(n_rows) * job.src_row);
        src = scratch.staged.get();
    }
    if (job.dst_type == GGML_TYPE_F32) {
        // Dequantize straight into the (aligned) output; no scratch needed.
        job.to_float(src, reinterpret_cast<float*>(dst), n);
        return true;
    }
    const float* f32 = reinterpret_cast<const float*>(src);
    if (job.to_float != nullptr) {
        job.to_float(src, scratch.f32.get(), n);
        f32 = scratch.f32.get();
    }
    if (std::isfinite(job.max_abs_input) && find_out_of_range(f32, n, job.max_abs_input) >= 0) {
        return false;
    }
    // start=0 with already-offset pointers: ggml_quantize_chunk's own offset math is row-based too.
    ggml_quantize_chunk(job.dst_type, f32, dst, 0, n_rows, job.n_per_row, nullptr);
    return true;
}

}  // namespace

int physical_cores() {
    const unsigned logical = std::max(1u, std::thread::hardware_concurrency());
#ifdef __linux__
    std::set<std::string> cores;
    for (unsigned cpu = 0; cpu < logical; ++cpu) {
        std::ifstream f("/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/thread_siblings_list");
        std::string siblings;
        if (f && std::getline(f, siblings)) {
            cores.insert(siblings);
        }
    }
    if (!cores.empty()) {
        return static_cast<int>(cores.size());
    }
#endif
    return static_cast<int>(logical);
}

int resolve_threads(int n_threads) {
    if (n_threads < 0) {
        throw std::invalid_argument("n_threads must be >= 0 (0 = one per physical core), got " +
                                    std::to_string(n_threads));
    }
    if (n_threads == 0) {
        static const int cores = physical_cores();
        n_threads = cores;
    }
    // More workers than logical CPUs only slow ggml's spinning threads down, and 10**6 of them would hang
    // (Python warns before it gets here: sdcpp.checks.threads).
    static const int logical = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
    return std::clamp(n_threads, 1, logical);
}

void convert_rows(ggml_type src_type, const uint8_t* src, ggml_type dst_type, uint8_t* dst,
                  int64_t n_rows, int64_t n_per_row, int n_threads) {
    if (n_rows <= 0) {
        return;
    }
    Job job{};
    job.src_type = src_type;
    job.dst_type = dst_type;
    job.src = src;
    job.dst = dst;
    job.n_per_row = n_per_row;
    job.src_row = ggml_row_size(src_type, n_per_row);
    job.dst_row = ggml_row_size(dst_type, n_per_row);
    job.to_float = src_type == GGML_TYPE_F32 ? nullptr : ggml_get_type_traits(src_type)->to_float;
    job.stage_src = reinterpret_cast<uintptr_t>(src) % kAlign != 0;
    job.max_abs_input = type_max_abs_input(dst_type);

    if (src_type == GGML_TYPE_F32 && dst_type == GGML_TYPE_F32) {
        std::memcpy(dst, src, static_cast<size_t>(n_rows) * job.src_row);
        return;
    }

    const int64_t rows_per_chunk = std::max<int64_t>(1, kScratchFloats / n_per_row);
    const int64_t n_chunks = (n_rows + rows_per_chunk - 1) / rows_per_chunk;
    const int n_workers = static_cast<int>(std::min<int64_t>(resolve_threads(n_threads), n_chunks));

    // Allocate all scratch up front on this thread: a bad_alloc inside a worker would terminate.
    const bool need_f32 = job.to_float != nullptr && dst_type != GGML_TYPE_F32;
    std::vector<Scratch> scratch(static_cast<size_t>(n_workers));
    for (auto& s : scratch) {
        if (need_f32) {
            s.f32.reset(new float[static_cast<size_t>(rows_per_chunk * n_per_row)]);
        }
        if (job.stage_src) {
            s.staged.reset(new uint8_t[static_cast<size_t>(rows_per_chunk) * job.src_row]);
        }
    }

    // Lazily builds lookup tables (iq* types); doing it here keeps workers from contending on its lock.
    ggml_quantize_init(dst_type);

    std::atomic<int64_t> next_chunk{0};
    std::atomic<bool> rejected{false};  // workers cannot throw; report after joining
    auto work = [&](Scratch& s) {
        while (!rejected.load(std::memory_order_relaxed)) {
            const int64_t c = next_chunk.fetch_add(1);
            if (c >= n_chunks) {
                return;
            }
            const int64_t row0 = c * rows_per_chunk;
            if (!convert_chunk(job, row0, std::min(rows_per_chunk, n_rows - row0), s)) {
                rejected = true;
            }
        }
    };

    std::vector<std::thread> threads;
    for (int i = 1; i < n_workers; ++i) {
        try {
            threads.emplace_back(work, std::ref(scratch[static_cast<size_t>(i)]));
        } catch (const std::system_error&) {
            break;  // fewer threads is fine: the calling thread drains the queue anyway
        }
    }
    work(scratch[0]);
    for (auto& t : threads) {
        t.join();
    }
    if (rejected) {
        char limit[32];
        std::snprintf(limit, sizeof(limit), "%g", static_cast<double>(job.max_abs_input));
        throw std::invalid_argument(std::string("input contains NaN/inf or values with |x| > ") + limit +
                                    ", which make ggml's " + ggml_type_name(dst_type) + " quantizer abort");
    }
}

}  // namespace sdcpp
