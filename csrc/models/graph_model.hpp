// What every model graph shares: its GraphRunner, the lock that serialises passes on it, its cancel token and
// introspection.
#pragma once

#include <cstddef>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "runtime/graph_runner.hpp"
#include "weight_store.hpp"

namespace sdcpp {

class GraphModel {
public:
    GraphModel(WeightStore& weights, int n_threads) : runner_(weights, n_threads), token_(runner_.cancel_token()) {}

    // Every weight a graph has read so far (a copy: a pass may run on another thread).
    std::vector<std::string> used_weights() const {
        std::lock_guard<std::mutex> lock(mutex_);
        const auto& used = runner_.used_weights();
        return {used.begin(), used.end()};
    }
    size_t compute_buffer_size() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return runner_.compute_buffer_size();
    }
    // Per-node timing of the next passes (see GraphRunner::set_profiling).
    void set_profiling(bool on) {
        std::lock_guard<std::mutex> lock(mutex_);
        runner_.set_profiling(on);
    }
    std::vector<GraphRunner::NodeTime> last_profile() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return runner_.last_profile();
    }
    // Runtime LoRA terms for the next passes (waits for a running pass).
    void set_lora(std::unordered_map<std::string, std::vector<LoraTerm>> terms) {
        std::lock_guard<std::mutex> lock(mutex_);
        runner_.set_lora(std::move(terms));
    }
    size_t lora_layers() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return runner_.lora_layers();
    }
    // The token that stops this model's passes (see GraphRunner). Reading it does not wait for a running pass,
    // so another thread can cancel one; sharing another token (set_cancel_token) waits for the pass to end.
    std::shared_ptr<CancelToken> cancel_token() const {
        std::lock_guard<std::mutex> lock(token_mutex_);
        return token_;
    }
    void set_cancel_token(std::shared_ptr<CancelToken> token) {
        if (token == nullptr) {
            throw std::invalid_argument("set_cancel_token: null token");
        }
        std::lock_guard<std::mutex> lock(mutex_);
        std::lock_guard<std::mutex> token_lock(token_mutex_);
        runner_.set_cancel_token(token);
        token_ = std::move(token);
    }

protected:
    GraphRunner runner_;
    mutable std::mutex mutex_;  // one graph at a time per runner

private:
    // runner_'s token, also held here so reading it never waits for a pass (runner_ is the pass's, under mutex_).
    mutable std::mutex token_mutex_;
    std::shared_ptr<CancelToken> token_;
};

}  // namespace sdcpp
