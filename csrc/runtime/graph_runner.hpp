// Runs forward graphs over the weights in a WeightStore, on the store's backend.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include <ggml-alloc.h>
#include <ggml-backend.h>
#include <ggml.h>

#include "runtime/cancel.hpp"
#include "weight_store.hpp"

namespace sdcpp {

// The backend could not allocate a graph's compute buffer: raised in Python as sdcpp.ResourceError (a MemoryError).
class ComputeBufferError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

// Usage per forward pass:
//   ggml_context* ctx = runner.begin();
//   ggml_tensor* x = runner.input(GGML_TYPE_F32, {W, H, C, N}, data, nbytes);
//   ggml_tensor* y = ... ops on x and runner.weight("unet.conv_in.weight") ...;
//   runner.run({y});  runner.read(y, out, nbytes);
// The compute buffer (ggml_gallocr) lives as long as the runner and only grows, so repeated calls
// with the same shapes (sampler steps) allocate nothing. Not thread-safe: one pass at a time.
// Cancellation: run() throws CancelledError when the runner's CancelToken is set before or during the pass. On the
// CPU, ggml's abort callback reads the token between nodes and sdcpp's custom ops between blocks of work; other
// backends (CUDA has no abort callback in this ggml) only stop between graphs. An aborted pass leaves nothing
// behind: the next run() allocates, uploads and computes afresh.
// One runtime LoRA term on a layer (see ops::linear / ops::conv2d): y += scale * up (down x) when `up` is set, else
// y += scale * down x with `down` a dense delta in the layer's own stored layout. The tensors live in another
// WeightStore on the same backend, which the caller keeps alive while the terms are set.
struct LoraTerm {
    ggml_tensor* down = nullptr;  // [in (x k x k), rank] or the dense delta [in (x k x k), out]
    ggml_tensor* up = nullptr;    // [rank, out], or nullptr for a dense delta
    float scale = 1.0f;
};

class GraphRunner {
public:
    explicit GraphRunner(WeightStore& weights, int n_threads = 0);
    ~GraphRunner();
    GraphRunner(const GraphRunner&) = delete;
    GraphRunner& operator=(const GraphRunner&) = delete;

    // Starts a new graph; tensors of the previous one become invalid.
    ggml_context* begin(size_t max_nodes = 65536);
    ggml_context* ctx() const { return ctx_; }
    size_t max_nodes() const { return max_nodes_; }  // of the graph begun last

    // A graph input; `data` is copied now and uploaded after allocation.
    ggml_tensor* input(ggml_type type, const std::vector<int64_t>& ne, const void* data, size_t nbytes);
    // A weight by canonical name; throws std::invalid_argument naming a missing tensor.
    ggml_tensor* weight(const std::string& name) const;
    bool has_weight(const std::string& name) const;

    // Builds, allocates and computes the graph producing `outputs`; throws CancelledError if the token stops it.
    void run(const std::vector<ggml_tensor*>& outputs);
    // Copies a computed tensor (contiguous) out; size must equal ggml_nbytes.
    void read(const ggml_tensor* t, void* dst, size_t size) const;

    size_t compute_buffer_size() const;

    // The token run() obeys: the runner's own until set_cancel_token shares one (a model's graphs share theirs).
    // Custom ops built for this runner's graphs take cancel_token().get(), valid while the graph is.
    const std::shared_ptr<CancelToken>& cancel_token() const { return cancel_; }
    void set_cancel_token(std::shared_ptr<CancelToken> token);

    // Profiling (for benchmarks): when on, run() computes one node at a time and records each node's wall
    // time. Slower than a normal run (a thread start/stop per node), so only the split between ops is meaningful.
    struct NodeTime {
        std::string op;    // ggml_op_desc: op or unary-op name
        std::string name;  // the tensor's name, as the graph builder set it
        double seconds;
        double flops;  // multiply-adds x 2 of matrix products (MUL_MAT, FLASH_ATTN_EXT), else 0
    };
    void set_profiling(bool on) { profiling_ = on; }
    const std::vector<NodeTime>& last_profile() const { return profile_; }
    // Every weight name a graph of this runner has asked for: lets tests prove no tensor goes unread.
    const std::set<std::string>& used_weights() const { return used_; }
    int n_threads() const { return n_threads_; }
    WeightStore& weights() const { return weights_; }

    // Runtime LoRA terms by layer prefix (canonical name without `.weight`); replaced as a whole between passes.
    void set_lora(std::unordered_map<std::string, std::vector<LoraTerm>> terms) { lora_ = std::move(terms); }
    const std::vector<LoraTerm>* lora(const std::string& prefix) const {
        if (lora_.empty()) {
            return nullptr;
        }
        auto it = lora_.find(prefix);
        return it == lora_.end() ? nullptr : &it->second;
    }
    size_t lora_layers() const { return lora_.size(); }

private:
    struct PendingInput {
        ggml_tensor* tensor;
        std::vector<uint8_t> bytes;
    };
    void free_graph();
    void compute_profiled(ggml_cgraph* gf);
    void compute(ggml_cgraph* gf);

    WeightStore& weights_;
    int n_threads_;
    ggml_gallocr_t galloc_ = nullptr;
    ggml_context* ctx_ = nullptr;
    size_t max_nodes_ = 0;
    std::vector<PendingInput> pending_;
    mutable std::set<std::string> used_;
    bool profiling_ = false;
    std::vector<NodeTime> profile_;
    std::shared_ptr<CancelToken> cancel_ = std::make_shared<CancelToken>();
    std::unordered_map<std::string, std::vector<LoraTerm>> lora_;
};

}  // namespace sdcpp
