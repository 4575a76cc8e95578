"""What every model wrapper offers around its sdcpp._core graph object (introspection, profiling, cancellation)."""

from __future__ import annotations

from .. import checks


def resolve_flash_attn(weights, flash_attn: bool | None) -> bool:
    """None: ggml's fused attention on the CPU backend, where its tiled kernel beat mul_mat + soft_max (SD1.5 UNet,
    64x64 latents: 7.3 s vs 8.3 s per call) and never builds the score matrix; GPU backends keep mul_mat +
    soft_max until their fused kernels have been checked on a device."""
    flash_attn = checks.optional_bool("flash_attn", flash_attn)
    if flash_attn is None:
        return weights.device.upper() == "CPU"
    return flash_attn


class GraphModel:
    """Calls into the graph run without the GIL. A Ctrl-C (or any signal handler that raises) on the main thread
    stops the running pass within ~0.1 s on the CPU backend and propagates (KeyboardInterrupt); `cancel_token`
    stops passes from any thread (sdcpp.Cancelled). GPU backends have no abort callback in this ggml (CUDA): there
    both take effect when the pass ends, before the next one."""

    _graph = None  # the sdcpp._core model object, set by the subclass

    @property
    def cancel_token(self):
        """The `sdcpp._core.CancelToken` that stops this model's passes: `cancel()` from any thread stops the
        running pass (it raises sdcpp.Cancelled) and refuses new ones until `reset()`. Assign one token to several
        models to stop them together (sdcpp.Model does)."""
        return self._graph.cancel_token

    @cancel_token.setter
    def cancel_token(self, token) -> None:
        self._graph.cancel_token = token

    def used_weights(self) -> set[str]:
        """Weight names the graphs built so far have read."""
        return set(self._graph.used_weights())

    def compute_buffer_size(self) -> int:
        return self._graph.compute_buffer_size()

    def set_profiling(self, on: bool = True) -> None:
        """Time each graph node of the following runs (slower: one thread start per node)."""
        self._graph.set_profiling(on)

    def last_profile(self) -> list[tuple[str, str, float, float]]:
        """(op, node name, seconds, flops) per node of the last profiled run; names group block parts
        (conv.matmul, conv.im2col, attn.kq, linear.matmul, norm.group, ...)."""
        return self._graph.last_profile()
