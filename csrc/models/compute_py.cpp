#include "models/compute_py.hpp"

#include <chrono>
#include <condition_variable>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>

#ifdef _WIN32
#include <process.h>
#else
#include <unistd.h>
#endif

#include "runtime/cancel.hpp"

namespace py = pybind11;

namespace sdcpp {

namespace {

// How long the main thread waits on a pass between two runs of the signal handlers: most of the ~0.2 s an
// interrupt may take, minus the few ms a custom op or ggml node needs to notice the token.
constexpr auto kSignalPoll = std::chrono::milliseconds(20);

bool on_main_thread() {
    const py::object main = py::module_::import("threading").attr("main_thread")();
    return main.attr("ident").cast<unsigned long>() == PyThread_get_thread_ident();
}

// The long-lived thread that runs the main thread's passes. One started per pass made every pass of a small graph
// ~8 ms slower on two cores (tiny CLIP: 0.9 ms -> 9-14 ms median), the new thread and the ggml workers it starts
// sharing a core until the scheduler spreads them. Used by the main thread only, with the GIL held.
struct PassThread {
    std::mutex mutex;
    std::condition_variable cv;
    const std::function<void()>* job = nullptr;  // set by the main thread, cleared by the pass thread when done
    bool done = false;
    std::exception_ptr error;
    bool busy = false;  // a pass is in flight (a signal handler calling a model meanwhile runs it in place)

    PassThread() {
        std::thread([this] { loop(); }).detach();  // waits for jobs until the process ends
    }

    void loop() {
        std::unique_lock<std::mutex> lock(mutex);
        for (;;) {
            cv.wait(lock, [this] { return job != nullptr; });
            const std::function<void()>* work = job;
            lock.unlock();
            std::exception_ptr failure;
            try {
                (*work)();
            } catch (...) {
                failure = std::current_exception();
            }
            lock.lock();
            job = nullptr;
            error = failure;
            done = true;
            cv.notify_all();
        }
    }

    // Waits up to `timeout` (forever when negative) for the job, with the GIL released; true when it is done.
    bool wait(std::chrono::milliseconds timeout) {
        py::gil_scoped_release nogil;
        std::unique_lock<std::mutex> lock(mutex);
        if (timeout.count() < 0) {
            cv.wait(lock, [this] { return done; });
            return true;
        }
        return cv.wait_for(lock, timeout, [this] { return done; });
    }
};

long process_id() {
#ifdef _WIN32
    return static_cast<long>(_getpid());
#else
    return static_cast<long>(getpid());
#endif
}

// This process's pass thread (a fork's child starts its own). Never freed: its detached thread uses it until exit.
PassThread& pass_thread() {
    static PassThread* thread = nullptr;
    static long owner = 0;
    if (thread == nullptr || owner != process_id()) {
        thread = new PassThread();
        owner = process_id();
    }
    return *thread;
}

}  // namespace

void run_pass(GraphModel& model, const std::function<void()>& work) {
    if (!on_main_thread() || pass_thread().busy) {
        py::gil_scoped_release nogil;
        work();
        return;
    }
    PassThread& pt = pass_thread();
    const std::shared_ptr<CancelToken> token = model.cancel_token();
    pt.busy = true;
    struct Idle {
        bool& busy;
        ~Idle() { busy = false; }
    } idle{pt.busy};
    {
        std::lock_guard<std::mutex> lock(pt.mutex);
        pt.done = false;
        pt.error = nullptr;
        pt.job = &work;
    }
    pt.cv.notify_all();
    while (!pt.wait(kSignalPoll)) {
        if (PyErr_CheckSignals() != 0) {
            // A handler raised: stop the pass and wait for it (its CancelledError is dropped), then clear the
            // reason so the model's next pass runs (a user's cancel set meanwhile stays).
            token->cancel(CancelToken::Reason::Interrupt);
            pt.wait(std::chrono::milliseconds(-1));
            token->clear(CancelToken::Reason::Interrupt);
            throw py::error_already_set();
        }
    }
    std::exception_ptr failure;
    {
        std::lock_guard<std::mutex> lock(pt.mutex);
        failure = pt.error;
        pt.error = nullptr;
    }
    if (failure) {
        std::rethrow_exception(failure);
    }
}

ops::Options kernel_options(bool flash_attn, double max_im2col_mib, int64_t f32_matmul_min_cols,
                            const std::string& precision) {
    if (!(max_im2col_mib >= 0.0)) {
        throw py::value_error("a memory budget in MiB must be >= 0");
    }
    if (precision != "f32" && precision != "bf16" && precision != "f16") {
        throw py::value_error("precision must be 'f32', 'bf16' or 'f16', got '" + precision + "'");
    }
    ops::Options opt;
    opt.flash_attn = flash_attn;
    opt.max_im2col_bytes = static_cast<size_t>(max_im2col_mib * 1048576.0);
    opt.f32_matmul_min_cols = f32_matmul_min_cols;
    opt.bf16 = precision == "bf16";
    opt.f16 = precision == "f16";
    return opt;
}

void register_cancel_token(py::module_& m) {
    py::class_<CancelToken, std::shared_ptr<CancelToken>>(
        m, "CancelToken",
        "A flag that stops the graph passes of every model sharing it: ggml's CPU abort callback reads it between "
        "nodes and sdcpp's custom ops between blocks of work; a stopped pass raises sdcpp.Cancelled. Thread-safe.")
        .def(py::init<>())
        .def(
            "cancel", [](CancelToken& t) { t.cancel(CancelToken::Reason::Cancel); },
            "Stop the passes running now and refuse new ones until reset().")
        .def("reset", &CancelToken::reset)
        .def_property_readonly("cancelled", &CancelToken::cancelled)
        .def(
            "check",
            [](const CancelToken& t) {
                if (t.cancelled()) {
                    throw CancelledError(t.reason());
                }
            },
            "Raise what a pass stopped by this token raises (sdcpp.Cancelled) when it is set.");
}

}  // namespace sdcpp
