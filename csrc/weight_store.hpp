// A named set of tensors living in one backend buffer on one device (model weights).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include <ggml-backend.h>
#include <ggml.h>

namespace sdcpp {

// Usage: add() every tensor, allocate() once, then set()/get(). Declarations are
// recorded first so the ggml context can be sized exactly at allocate() time.
// All errors are std::invalid_argument (wrong names, sizes, order) before ggml is called.
class WeightStore {
public:
    WeightStore(const std::string& device, int n_threads);
    ~WeightStore();
    WeightStore(const WeightStore&) = delete;
    WeightStore& operator=(const WeightStore&) = delete;

    void add(const std::string& name, ggml_type type, const std::vector<int64_t>& ne);
    void allocate();
    bool allocated() const { return allocated_; }
    size_t buffer_size() const;

    // Byte size the caller must provide to set() / will receive from get().
    size_t nbytes(const std::string& name) const;
    void set(const std::string& name, const void* data, size_t size);  // GIL-free safe
    void get(const std::string& name, void* out, size_t size) const;   // GIL-free safe

    std::vector<std::string> names() const;
    bool contains(const std::string& name) const { return index_.count(name) != 0; }
    ggml_type type(const std::string& name) const;
    std::vector<int64_t> ne(const std::string& name) const;
    std::string device() const;
    bool is_cpu() const;

    // For graph code that wants to use the tensors directly (after allocate()).
    ggml_tensor* tensor(const std::string& name) const;
    ggml_backend_t backend() const { return backend_; }

private:
    struct Decl {
        std::string name;
        ggml_type type;
        int n_dims;
        std::array<int64_t, GGML_MAX_DIMS> ne;
        size_t nbytes;
        ggml_tensor* tensor = nullptr;
    };

    const Decl& lookup(const std::string& name) const;
    const Decl& lookup_allocated(const std::string& name, size_t size) const;

    ggml_backend_dev_t dev_ = nullptr;
    ggml_backend_t backend_ = nullptr;
    ggml_context* ctx_ = nullptr;
    ggml_backend_buffer_t buffer_ = nullptr;
    bool allocated_ = false;
    std::vector<Decl> decls_;
    // ggml_set_name truncates to GGML_MAX_NAME, so the full names live here.
    std::unordered_map<std::string, size_t> index_;
};

}  // namespace sdcpp
