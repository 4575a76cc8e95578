#include "runtime/graph_runner.hpp"

#include <chrono>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <utility>

#include "convert.hpp"
#include "runtime/blas.hpp"
#include "devices.hpp"

namespace sdcpp {

GraphRunner::GraphRunner(WeightStore& weights, int n_threads)
    : weights_(weights), n_threads_(resolve_threads(n_threads)) {
    if (!weights_.allocated()) {
        throw std::invalid_argument("GraphRunner: the WeightStore must be allocated first");
    }
    galloc_ = ggml_gallocr_new(ggml_backend_get_default_buffer_type(weights_.backend()));
    if (galloc_ == nullptr) {
        throw std::runtime_error("GraphRunner: could not create a graph allocator");
    }
}

GraphRunner::~GraphRunner() {
    free_graph();
    ggml_gallocr_free(galloc_);
}

void GraphRunner::free_graph() {
    if (ctx_ != nullptr) {
        ggml_free(ctx_);
        ctx_ = nullptr;
    }
    pending_.clear();
}

ggml_context* GraphRunner::begin(size_t max_nodes) {
    free_graph();
    max_nodes_ = max_nodes;
    // Metadata only (no_alloc): tensor data lives in the gallocr buffer. Each node may also carry a custom op's
    // argument block (custom_op_args).
    ggml_init_params params{};
    params.mem_size =
        (ggml_tensor_overhead() + kCustomOpArgsBudget) * max_nodes + ggml_graph_overhead_custom(max_nodes, false);
    params.mem_buffer = nullptr;
    params.no_alloc = true;
    ctx_ = ggml_init(params);
    if (ctx_ == nullptr) {
        throw std::runtime_error("GraphRunner: ggml_init failed");
    }
    return ctx_;
}

ggml_tensor* GraphRunner::input(ggml_type type, const std::vector<int64_t>& ne, const void* data, size_t nbytes) {
    if (ctx_ == nullptr) {
        throw std::logic_error("GraphRunner::input before begin()");
    }
    if (ne.empty() || ne.size() > GGML_MAX_DIMS) {
        throw std::invalid_argument("GraphRunner::input: 1 to 4 dimensions");
    }
    int64_t dims[GGML_MAX_DIMS] = {1, 1, 1, 1};
    for (size_t i = 0; i < ne.size(); ++i) {
        if (ne[i] <= 0) {
            throw std::invalid_argument("GraphRunner::input: dimensions must be positive");
        }
        dims[i] = ne[i];
    }
    ggml_tensor* t = ggml_new_tensor(ctx_, type, static_cast<int>(ne.size()), dims);
    if (ggml_nbytes(t) != nbytes) {
        throw std::invalid_argument("GraphRunner::input: got " + std::to_string(nbytes) + " bytes, tensor needs " +
                                    std::to_string(ggml_nbytes(t)));
    }
    ggml_set_input(t);
    PendingInput p{t, std::vector<uint8_t>(nbytes)};
    std::memcpy(p.bytes.data(), data, nbytes);
    pending_.push_back(std::move(p));
    return t;
}

ggml_tensor* GraphRunner::weight(const std::string& name) const {
    if (!weights_.contains(name)) {
        throw std::invalid_argument("model weight '" + name + "' is missing");
    }
    used_.insert(name);
    return weights_.tensor(name);
}

bool GraphRunner::has_weight(const std::string& name) const {
    return weights_.contains(name);
}

void GraphRunner::set_cancel_token(std::shared_ptr<CancelToken> token) {
    if (token == nullptr) {
        throw std::invalid_argument("GraphRunner::set_cancel_token: null token");
    }
    cancel_ = std::move(token);
}

namespace {

// Installs the token as the backend's abort callback for one computation (the backend is shared by every graph
// model of a WeightStore) and takes it off again, so the backend never holds a pointer past the pass.
class AbortGuard {
public:
    AbortGuard(ggml_backend_t backend, CancelToken* token) : backend_(backend) {
        set_backend_abort_callback(backend_, &CancelToken::abort_callback, token);
    }
    ~AbortGuard() { set_backend_abort_callback(backend_, nullptr, nullptr); }
    AbortGuard(const AbortGuard&) = delete;
    AbortGuard& operator=(const AbortGuard&) = delete;

private:
    ggml_backend_t backend_;
};

}  // namespace

void GraphRunner::run(const std::vector<ggml_tensor*>& outputs) {
    if (ctx_ == nullptr) {
        throw std::logic_error("GraphRunner::run before begin()");
    }
    if (cancel_->cancelled()) {
        throw CancelledError(cancel_->reason());
    }
    ggml_cgraph* gf = ggml_new_graph_custom(ctx_, max_nodes_, false);
    for (ggml_tensor* out : outputs) {
        ggml_set_output(out);
        ggml_build_forward_expand(gf, out);
    }
    if (!ggml_gallocr_alloc_graph(galloc_, gf)) {
        throw ComputeBufferError("could not allocate the compute buffer of a " + std::to_string(ggml_graph_n_nodes(gf)) +
                                 "-node graph on " + weights_.device() +
                                 " (out of memory); use a smaller size or batch");
    }
    for (const auto& p : pending_) {
        ggml_backend_tensor_set(p.tensor, p.bytes.data(), 0, p.bytes.size());
    }
    set_backend_threads(weights_.backend(), n_threads_);
    AbortGuard abort(weights_.backend(), cancel_.get());
    if (profiling_) {
        compute_profiled(gf);
    } else {
        compute(gf);
    }
    // A custom op that saw the token may have stopped early after ggml's last check: its output is incomplete.
    if (cancel_->cancelled()) {
        throw CancelledError(cancel_->reason());
    }
}

void GraphRunner::compute(ggml_cgraph* gf) {
    const ggml_status status = ggml_backend_graph_compute(weights_.backend(), gf);
    if (status == GGML_STATUS_ABORTED) {
        throw CancelledError(cancel_->reason());
    }
    if (status != GGML_STATUS_SUCCESS) {
        throw std::runtime_error("GraphRunner: graph computation failed");
    }
}

void GraphRunner::compute_profiled(ggml_cgraph* gf) {
    profile_.clear();
    ggml_init_params params{};
    params.mem_size = ggml_graph_overhead_custom(1, false);
    params.no_alloc = true;
    std::unique_ptr<ggml_context, decltype(&ggml_free)> one_ctx(ggml_init(params), &ggml_free);
    ggml_cgraph* one = ggml_new_graph_custom(one_ctx.get(), 1, false);
    const int n = ggml_graph_n_nodes(gf);
    for (int i = 0; i < n; ++i) {
        ggml_tensor* node = ggml_graph_node(gf, i);
        if (cancel_->cancelled()) {  // ggml checks only after a graph's node: here before each
            throw CancelledError(cancel_->reason());
        }
        ggml_graph_clear(one);
        ggml_graph_add_node(one, node);
        const auto t0 = std::chrono::steady_clock::now();
        compute(one);
        const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
        double flops = 0.0;
        if (node->op == GGML_OP_CUSTOM) {
            flops = blas::flops(node);
        } else if (node->op == GGML_OP_MUL_MAT) {
            flops = 2.0 * static_cast<double>(node->src[0]->ne[0]) * static_cast<double>(ggml_nelements(node));
        } else if (node->op == GGML_OP_FLASH_ATTN_EXT) {  // on the CPU q's width includes the zero padding
            flops = 4.0 * static_cast<double>(ggml_nelements(node->src[0])) * static_cast<double>(node->src[1]->ne[1]);
        }
        profile_.push_back({ggml_op_desc(node), ggml_get_name(node), dt.count(), flops});
    }
}

void GraphRunner::read(const ggml_tensor* t, void* dst, size_t size) const {
    if (size != ggml_nbytes(t)) {
        throw std::invalid_argument("GraphRunner::read: size mismatch");
    }
    ggml_backend_tensor_get(t, dst, 0, size);
}

size_t GraphRunner::compute_buffer_size() const {
    return ggml_gallocr_get_buffer_size(galloc_, 0);
}

}  // namespace sdcpp
