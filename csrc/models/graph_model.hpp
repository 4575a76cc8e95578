// What every model graph shares: its GraphRunner, the lock that serialises passes on it, and introspection.
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

#include "runtime/graph_runner.hpp"
#include "weight_store.hpp"

namespace sdcpp {

class GraphModel {
public:
    GraphModel(WeightStore& weights, int n_threads) : runner_(weights, n_threads) {}

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

protected:
    GraphRunner runner_;
    mutable std::mutex mutex_;  // one graph at a time per runner
};

}  // namespace sdcpp
