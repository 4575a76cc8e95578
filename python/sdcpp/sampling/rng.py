"""Seeded Gaussian noise sources, numpy only: `rng.randn(shape) -> float32 array`, stateful across calls.

NumpyRNG     numpy's PCG64 Generator: the default; reproducible wherever numpy runs.
PhiloxRNG    torch.randn(..., device="cuda") after torch.manual_seed(seed), as A1111's "NV" source
             (modules/rng_philox.py) and stable-diffusion.cpp's "cuda" RNG (rng_philox.hpp) compute it.
TorchCpuRNG  torch.randn(...) on the CPU generator after torch.manual_seed(seed) (A1111's "CPU" source),
             bit-exact with x86 torch builds.
"""

from __future__ import annotations

import math

import numpy as np

_U32 = 0xFFFFFFFF


def _numel(shape) -> tuple[tuple[int, ...], int]:
    shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
    return shape, math.prod(shape)


class NumpyRNG:
    """numpy.random.Generator(PCG64(seed)).standard_normal in float32 (ziggurat).

    PCG64 and the ziggurat are integer/table arithmetic, so streams agree across platforms (the rare wedge and
    tail rejections call libm's expf/log1pf). NumPy keeps Generator streams stable in practice but does not
    promise it across versions; tests pin the first values.
    """

    def __init__(self, seed: int):
        self.seed = int(seed)
        self._gen = np.random.Generator(np.random.PCG64(self.seed))

    def randn(self, shape) -> np.ndarray:
        return self._gen.standard_normal(_numel(shape)[0], dtype=np.float32)


# ---------------------------------------------------------------------------------------------------------------
# Philox-4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11), the counter-based
# generator behind curand's curandStatePhilox4_32_10 and therefore torch's CUDA randn. Constants from the paper /
# Random123 philox.h: multipliers M0, M1 and Weyl key increments W0 (golden ratio), W1 (sqrt(3) - 1).
_PHILOX_M0, _PHILOX_M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
# curand's Box-Muller constants as float32: CURAND_2POW32_INV and CURAND_2POW32_INV * 2pi (curand_normal.h);
# A1111 rounds the same way (2.3283064e-10, 2.3283064e-10 * 6.2831855, float32).
_INV_2POW32 = np.float32(2.3283064e-10)
_INV_2POW32_2PI = np.float32(2.3283064e-10 * 6.2831855)


def philox4x32_10(counter: np.ndarray, key: tuple[int, int]) -> np.ndarray:
    """Ten Philox rounds on a (4, n) uint32 counter block with a 2-word key; returns (4, n) uint32."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) for c in counter)
    k0, k1 = key[0] & _U32, key[1] & _U32
    mask = np.uint64(_U32)
    for _ in range(10):
        p0, p1 = c0 * _PHILOX_M0, c2 * _PHILOX_M1  # 32 x 32 -> 64-bit products (mulhilo)
        hi0, hi1 = p0 >> np.uint64(32), p1 >> np.uint64(32)
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), p1 & mask, hi0 ^ c3 ^ np.uint64(k1), p0 & mask
        k0, k1 = (k0 + _PHILOX_W0) & _U32, (k1 + _PHILOX_W1) & _U32
    return np.stack([c0, c1, c2, c3]).astype(np.uint32)


class PhiloxRNG:
    """torch's CUDA randn, reproduced on the CPU the way A1111 and stable-diffusion.cpp do it.

    Element i of the k-th randn call (k = 0, 1, ...) comes from one Philox-4x32-10 block with
    counter = {k, 0, i & 0xffffffff, i >> 32} and key = {seed & 0xffffffff, seed >> 32}: its first two words go
    through curand's Box-Muller and the sine branch is kept (curand_normal4's first output); words 3 and 4 are
    unused. Arithmetic follows A1111's rng_philox.py (float32 constants, float64 evaluation, float32 result),
    so outputs equal A1111's bit for bit.

    Parity with an actual GPU holds for the shapes SD uses, per A1111's claim and the published reference values
    our tests check; it was not measured here (no GPU). A GPU evaluates Box-Muller with float32 fast-math
    intrinsics, so single values may differ from a GPU's in the last bits.
    """

    def __init__(self, seed: int):
        self.seed = int(seed) % (1 << 64)
        self.offset = 0  # one per randn call, like A1111

    def randn(self, shape) -> np.ndarray:
        shape, n = _numel(shape)
        index = np.arange(n, dtype=np.uint64)
        counter = np.stack([
            np.full(n, self.offset & _U32, dtype=np.uint64),
            np.zeros(n, dtype=np.uint64),
            index & np.uint64(_U32),
            index >> np.uint64(32),
        ])
        self.offset += 1
        words = philox4x32_10(counter, (self.seed & _U32, self.seed >> 32))
        # curand_uniform-style mapping to (0, 1]: (w + 1/2) / 2**32, then Box-Muller.
        u = words[0] * np.float64(_INV_2POW32) + np.float64(_INV_2POW32 / 2)
        v = words[1] * np.float64(_INV_2POW32_2PI) + np.float64(_INV_2POW32_2PI / 2)
        return (np.sqrt(-2.0 * np.log(u)) * np.sin(v)).astype(np.float32).reshape(shape)


# ---------------------------------------------------------------------------------------------------------------
# torch's CPU generator: MT19937 seeded like the reference init_genrand (torch's at::mt19937), plus
# aten/src/ATen/native/cpu/DistributionTemplates.h's normal_kernel.


def _mt19937_state(seed: int) -> np.ndarray:
    """The 624-word MT19937 state of init_genrand(seed & 0xffffffff) (Matsumoto & Nishimura 1998)."""
    state = [seed & _U32]
    for i in range(1, 624):
        prev = state[-1]
        state.append((1812433253 * (prev ^ (prev >> 30)) + i) & _U32)
    return np.array(state, dtype=np.uint32)


def _fma(a, b, c) -> np.ndarray:
    """float32 fused multiply-add: the float32 product is exact in float64, so only the sum rounds (twice: to
    float64 then float32, which differs from one rounding only in vanishingly rare ties)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + np.asarray(c, np.float64)).astype(np.float32)


def _log_avx2(x: np.ndarray) -> np.ndarray:
    """log256_ps from torch's avx_mathfun.h (Cephes logf in float32), with the multiply-adds GCC fuses."""
    f32 = np.float32
    bits = x.view(np.int32)
    e = ((bits >> 23) - 127).astype(f32) + f32(1)  # exponent of x as a float
    m = ((bits & ~0x7F800000) | 0x3F000000).view(f32)  # mantissa in [0.5, 1)
    small = m < f32(0.707106781186547524)  # sqrt(1/2): fold into [sqrt(1/2), sqrt(2)) around 1
    e = e - small.astype(f32)
    m = (m - f32(1)) + np.where(small, m, f32(0))
    z = m * m
    y = np.full_like(m, f32(7.0376836292e-2))
    for p in (-1.1514610310e-1, 1.1676998740e-1, -1.2420140846e-1, 1.4249322787e-1,
              -1.6668057665e-1, 2.0000714765e-1, -2.4999993993e-1, 3.3333331174e-1):
        y = _fma(y, m, f32(p))
    y = _fma(y * m, z, e * f32(-2.12194440e-4))
    y = y - z * f32(0.5)
    return (m + y) + e * f32(0.693359375)


def _sincos_avx2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """sincos256_ps from avx_mathfun.h (Cephes sinf/cosf) for x >= 0, with GCC's fused multiply-adds."""
    f32 = np.float32
    j = (x * f32(1.27323954473516)).astype(np.int32)  # octant: x * 4/pi, truncated
    j = (j + 1) & ~1
    y = j.astype(f32)
    # Cody-Waite reduction by pi/4 in three parts.
    for part in (-0.78515625, -2.4187564849853515625e-4, -3.77489497744594108e-8):
        x = _fma(y, f32(part), x)
    z = x * x
    cos_poly = _fma(_fma(np.full_like(z, f32(2.443315711809948e-5)), z, f32(-1.388731625493765e-3)),
                    z, f32(4.166664568298827e-2))
    cos_poly = _fma(cos_poly * z, z, -(z * f32(0.5))) + f32(1)
    sin_poly = _fma(_fma(np.full_like(z, f32(-1.9515295891e-4)), z, f32(8.3321608736e-3)),
                    z, f32(-1.6666654611e-1))
    sin_poly = _fma(sin_poly * z, x, x)
    use_sin_poly = (j & 2) == 0
    sin = np.where(use_sin_poly, sin_poly, cos_poly)
    cos = np.where(use_sin_poly, cos_poly, sin_poly)
    sin = np.where((j & 4) != 0, -sin, sin)
    cos = np.where(((j - 2) & 4) == 0, -cos, cos)
    return sin, cos


class TorchCpuRNG:
    """`torch.manual_seed(seed)` then successive `torch.randn(shape)` on the CPU, in numpy.

    Uniforms are MT19937 words masked to 24 bits / 2**24. For a float32 tensor of >= 16 elements torch fills
    all of them with uniforms, then Box-Muller transforms each block of 16 (u[0:8] -> radius, u[8:16] -> angle;
    cos to the first 8, sin to the last 8); if the size is not a multiple of 16 it draws 16 fresh uniforms and
    recomputes the last 16 outputs. Smaller tensors take the scalar path: double-precision Box-Muller on two
    53-bit uniforms, returning the cosine and caching the sine for the next draw.

    kernel: "avx2" (default) reproduces the vectorised Box-Muller that x86 torch builds run when the CPU has
    AVX2 (and AVX512) — bit-exact; "scalar" the portable one used without it (e.g. ATEN_CPU_CAPABILITY=default
    or ARM builds), with libm's logf/cosf/sinf, matched to within 1 ulp (libm is not correctly rounded).
    """

    KERNELS = ("avx2", "scalar")

    def __init__(self, seed: int, kernel: str = "avx2"):
        if kernel not in self.KERNELS:
            raise ValueError(f"kernel must be one of {self.KERNELS}, not {kernel!r}")
        self.seed = int(seed) % (1 << 64)  # torch takes the seed as uint64 and keeps its low 32 bits for MT
        self.kernel = kernel
        self._bits = np.random.MT19937()
        self._bits.state = {"bit_generator": "MT19937", "state": {"key": _mt19937_state(self.seed), "pos": 624}}
        self._cached = None  # the spare sine of the scalar path

    def _words(self, n: int) -> np.ndarray:
        return self._bits.random_raw(n).astype(np.uint64)

    def _uniform24(self, n: int) -> np.ndarray:
        return (self._words(n) & np.uint64(0xFFFFFF)).astype(np.float32) * np.float32(2.0**-24)

    def _box_muller_16(self, u: np.ndarray) -> np.ndarray:
        """Normal values for uniforms in blocks of 16 (len(u) a multiple of 16)."""
        u = u.reshape(-1, 2, 8)
        u1, u2 = np.float32(1) - u[:, 0], u[:, 1]  # 1 - u: log needs (0, 1]
        if self.kernel == "avx2":
            radius = np.sqrt(np.float32(-2) * _log_avx2(u1))
            sin, cos = _sincos_avx2(np.float32(2 * math.pi) * u2)
        else:  # std::log / cos / sin on float; theta rounded from a double product
            radius = np.sqrt(np.float32(-2) * np.log(u1.astype(np.float64)).astype(np.float32))
            theta = (2 * math.pi * u2.astype(np.float64)).astype(np.float32).astype(np.float64)
            sin, cos = np.sin(theta).astype(np.float32), np.cos(theta).astype(np.float32)
        return np.stack([radius * cos, radius * sin], axis=1).reshape(-1)

    def _scalar_normal(self) -> float:
        if self._cached is not None:
            value, self._cached = self._cached, None
            return value
        w = self._words(4)
        # random64() = first word << 32 | second; uniform<double> keeps the low 53 bits.
        u1, u2 = (float(((hi << np.uint64(32)) | lo) & np.uint64((1 << 53) - 1)) * 2.0**-53
                  for hi, lo in ((w[0], w[1]), (w[2], w[3])))
        radius = math.sqrt(-2.0 * math.log1p(-u2))
        self._cached = radius * math.sin(2.0 * math.pi * u1)
        return radius * math.cos(2.0 * math.pi * u1)

    def randn(self, shape) -> np.ndarray:
        shape, n = _numel(shape)
        if n < 16:
            return np.array([self._scalar_normal() for _ in range(n)], dtype=np.float64).astype(np.float32).reshape(
                shape)
        out = np.empty(n, dtype=np.float32)
        whole = n - n % 16
        out[:whole] = self._box_muller_16(self._uniform24(n)[:whole])
        if whole != n:
            out[n - 16:] = self._box_muller_16(self._uniform24(16))
        return out.reshape(shape)


RNGS = {"numpy": NumpyRNG, "philox": PhiloxRNG, "torch_cpu": TorchCpuRNG}
ALIASES = {"cuda": "philox", "nv": "philox", "cpu": "torch_cpu", "default": "numpy"}  # A1111 / sd.cpp names


def make_rng(name: str, seed: int):
    """An RNG by name: "numpy" (default), "philox" ("cuda", "nv"), "torch_cpu" ("cpu")."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in RNGS:
        raise ValueError(f"unknown RNG {name!r}; choose from {sorted(RNGS)} (aliases {sorted(ALIASES)})")
    return RNGS[key](seed)
