#include "weight_store.hpp"

#include <cstdint>
#include <stdexcept>

#include <ggml-alloc.h>

#include "convert.hpp"
#include "devices.hpp"
#include "types.hpp"

namespace sdcpp {

WeightStore::WeightStore(const std::string& device, int n_threads) {
    const int threads = resolve_threads(n_threads);
    dev_ = find_device(device);
    backend_ = ggml_backend_dev_init(dev_, nullptr);
    if (backend_ == nullptr) {
        throw std::runtime_error(std::string("failed to initialise ggml device ") + ggml_backend_dev_name(dev_));
    }
    set_backend_threads(backend_, threads);
}

WeightStore::~WeightStore() {
    if (buffer_ != nullptr) {
        ggml_backend_buffer_free(buffer_);
    }
    if (ctx_ != nullptr) {
        ggml_free(ctx_);
    }
    if (backend_ != nullptr) {
        ggml_backend_free(backend_);
    }
}

void WeightStore::add(const std::string& name, ggml_type type, const std::vector<int64_t>& ne) {
    if (allocated_) {
        throw std::invalid_argument("WeightStore.add('" + name + "') called after allocate()");
    }
    if (name.empty()) {
        throw std::invalid_argument("tensor name must not be empty");
    }
    if (index_.count(name) != 0) {
        throw std::invalid_argument("duplicate tensor name '" + name + "'");
    }
    if (ne.empty() || ne.size() > GGML_MAX_DIMS) {
        throw std::invalid_argument("tensor '" + name + "' must have 1 to 4 dimensions, got " +
                                    std::to_string(ne.size()));
    }
    Decl d;
    d.name = name;
    d.type = type;
    d.n_dims = static_cast<int>(ne.size());
    d.ne.fill(1);
    for (size_t i = 0; i < ne.size(); ++i) {
        if (ne[i] <= 0) {
            throw std::invalid_argument("tensor '" + name + "' has non-positive ne[" + std::to_string(i) + "]");
        }
        d.ne[i] = ne[i];
    }
    // ggml multiplies these without overflow checks.
    int64_t elements = 1;
    for (int64_t n : d.ne) {
        if (elements > INT64_MAX / n) {
            throw std::invalid_argument("tensor '" + name + "' is too large");
        }
        elements *= n;
    }
    // ggml only checks ne0 against the block size with a debug assert.
    size_t bytes = checked_row_size(type, d.ne[0]);
    for (int i = 1; i < GGML_MAX_DIMS; ++i) {
        bytes = checked_mul(bytes, static_cast<size_t>(d.ne[i]));
    }
    d.nbytes = bytes;
    index_.emplace(name, decls_.size());
    decls_.push_back(std::move(d));
}

void WeightStore::allocate() {
    if (allocated_) {
        throw std::invalid_argument("WeightStore.allocate() called twice");
    }
    ggml_init_params params{};
    params.mem_size = ggml_tensor_overhead() * (decls_.size() + 1);
    params.mem_buffer = nullptr;
    params.no_alloc = true;  // metadata only; data goes into the backend buffer
    ggml_context* ctx = ggml_init(params);
    if (ctx == nullptr) {
        throw std::runtime_error("ggml_init failed");
    }
    for (auto& d : decls_) {
        d.tensor = ggml_new_tensor(ctx, d.type, d.n_dims, d.ne.data());
        ggml_set_name(d.tensor, d.name.c_str());
    }
    ggml_backend_buffer_t buffer = nullptr;
    if (!decls_.empty()) {
        buffer = ggml_backend_alloc_ctx_tensors(ctx, backend_);
        if (buffer == nullptr) {
            ggml_free(ctx);
            for (auto& d : decls_) {
                d.tensor = nullptr;
            }
            throw std::runtime_error(std::string("failed to allocate the weight buffer on ") +
                                     ggml_backend_dev_name(dev_) + " (out of memory?)");
        }
        // Lets a scheduler know these tensors are weights (it prefers running ops where weights live).
        ggml_backend_buffer_set_usage(buffer, GGML_BACKEND_BUFFER_USAGE_WEIGHTS);
    }
    ctx_ = ctx;
    buffer_ = buffer;
    allocated_ = true;
}

size_t WeightStore::buffer_size() const {
    if (!allocated_) {
        throw std::invalid_argument("WeightStore.buffer_size() called before allocate()");
    }
    return buffer_ != nullptr ? ggml_backend_buffer_get_size(buffer_) : 0;
}

const WeightStore::Decl& WeightStore::lookup(const std::string& name) const {
    auto it = index_.find(name);
    if (it == index_.end()) {
        throw std::invalid_argument("unknown tensor name '" + name + "'");
    }
    return decls_[it->second];
}

const WeightStore::Decl& WeightStore::lookup_allocated(const std::string& name, size_t size) const {
    const Decl& d = lookup(name);
    if (!allocated_) {
        throw std::invalid_argument("WeightStore: tensor '" + name + "' accessed before allocate()");
    }
    if (size != d.nbytes) {
        throw std::invalid_argument("tensor '" + name + "' holds " + std::to_string(d.nbytes) +
                                    " bytes, got a buffer of " + std::to_string(size));
    }
    return d;
}

size_t WeightStore::nbytes(const std::string& name) const { return lookup(name).nbytes; }

void WeightStore::set(const std::string& name, const void* data, size_t size) {
    const Decl& d = lookup_allocated(name, size);
    ggml_backend_tensor_set(d.tensor, data, 0, size);
}

void WeightStore::get(const std::string& name, void* out, size_t size) const {
    const Decl& d = lookup_allocated(name, size);
    ggml_backend_tensor_get(d.tensor, out, 0, size);
}

std::vector<std::string> WeightStore::names() const {
    std::vector<std::string> out;
    out.reserve(decls_.size());
    for (const auto& d : decls_) {
        out.push_back(d.name);
    }
    return out;
}

ggml_type WeightStore::type(const std::string& name) const { return lookup(name).type; }

std::vector<int64_t> WeightStore::ne(const std::string& name) const {
    const Decl& d = lookup(name);
    return std::vector<int64_t>(d.ne.begin(), d.ne.begin() + d.n_dims);
}

std::string WeightStore::device() const { return ggml_backend_dev_name(dev_); }

bool WeightStore::is_cpu() const { return ggml_backend_dev_type(dev_) == GGML_BACKEND_DEVICE_TYPE_CPU; }

ggml_tensor* WeightStore::tensor(const std::string& name) const {
    const Decl& d = lookup(name);
    if (!allocated_) {
        throw std::invalid_argument("WeightStore: tensor '" + name + "' accessed before allocate()");
    }
    return d.tensor;
}

}  // namespace sdcpp
