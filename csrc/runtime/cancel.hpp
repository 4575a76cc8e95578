// Cooperative cancellation of graph computations: one atomic flag, shared by the graphs of a model, that ggml's CPU
// abort callback reads between nodes and sdcpp's own long custom ops read between blocks of their work.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include <ggml.h>

namespace sdcpp {

class CancelToken {
public:
    enum class Reason : int {
        None = 0,
        Cancel = 1,     // a user's cancel (Model.cancel, a progress callback returning False): sdcpp.Cancelled
        Interrupt = 2,  // a signal handler raised while a graph ran (Ctrl-C): the Python exception propagates
    };

    // Asks every computation reading this token to stop; the first reason stays until reset(). Lock-free.
    void cancel(Reason why = Reason::Cancel) {
        int none = 0;
        state_.compare_exchange_strong(none, static_cast<int>(why));
    }
    void reset() { state_.store(0); }
    // Clears the token only when `why` is its reason (an interrupt that was handled; a user's cancel stays).
    void clear(Reason why) {
        int expected = static_cast<int>(why);
        state_.compare_exchange_strong(expected, 0);
    }
    bool cancelled() const { return state_.load(std::memory_order_relaxed) != 0; }
    Reason reason() const { return static_cast<Reason>(state_.load()); }

    // A ggml_abort_callback; `data` is the token.
    static bool abort_callback(void* data) { return static_cast<const CancelToken*>(data)->cancelled(); }

private:
    std::atomic<int> state_{0};
};

// A computation stopped by its token. Python: sdcpp.Cancelled (module.cpp).
class CancelledError : public std::runtime_error {
public:
    explicit CancelledError(CancelToken::Reason why)
        : std::runtime_error(why == CancelToken::Reason::Interrupt ? "graph computation interrupted"
                                                                  : "graph computation cancelled"),
          reason(why) {}
    CancelToken::Reason reason;
};

// What a custom op polls between blocks of work (`token` may be null: never cancelled).
inline bool stop_requested(const CancelToken* token) { return token != nullptr && token->cancelled(); }

// Bytes a custom op's argument block may take in a graph's context; GraphRunner::begin budgets this much per node
// on top of the tensors (ggml object header included).
constexpr size_t kCustomOpArgsBudget = 128;

// A copy of `args` inside the graph's ggml context (ggml_new_buffer), which lives exactly as long as the graph: for
// custom ops whose parameters (a token pointer and some numbers) do not fit in the userdata pointer itself.
template <class T>
T* custom_op_args(ggml_context* ctx, const T& args) {
    static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 64, "a small trivially copyable struct");
    void* p = ggml_new_buffer(ctx, sizeof(T));
    std::memcpy(p, &args, sizeof(T));
    return static_cast<T*>(p);
}

}  // namespace sdcpp
