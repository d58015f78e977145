"""Stochastic Lanczos quadrature: the spectral density of a symmetric operator as Ritz values
(nodes) and weights.

For a random ``v`` with ``E[v v^T] = I``, m Lanczos steps on ``(A, v)`` give a tridiagonal T_m;
its eigenvalues ``theta_j`` are Gauss-quadrature nodes and the squared first components of its
normalised eigenvectors are the weights ``w_j`` (they sum to 1), with
``sum_j w_j theta_j^k = v^T A^k v / v^T v`` for ``k <= 2m - 1``. The paper plots this discrete
density for one vector as a stem plot, without smoothing; :meth:`Spectrum.density` smooths it for
comparison with tools that do.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxspec.checks import assert_symmetric, check_dimension
from jaxspec.lanczos import LanczosResult, run_lanczos
from jaxspec.linearized import linearized
from jaxspec.operator import CurvatureOperator
from jaxspec.ritz import ritz_pairs

__all__ = ["NegativeMass", "Spectrum", "probe_dtype", "probes_symmetry", "random_probe", "slq",
           "slq_runs"]


class NegativeMass(NamedTuple):
    """Negative part of a discrete spectrum.

    Attributes:
      count: number of negative Ritz values.
      count_separated: number of negative Ritz values well separated from the origin cluster.
      mass: total weight of the separated negative Ritz values.

    Example:
      >>> from jaxspec import Spectrum
      >>> m = Spectrum([-2.0, 1.0, 3.0], [0.25, 0.25, 0.5]).negative()
      >>> m.count, m.count_separated, m.mass
      (1, 1, 0.25)
    """

    count: int
    count_separated: int
    mass: float


@dataclass(frozen=True, eq=False)
class Spectrum:
    """A discrete spectral density: Ritz values ``nodes`` (ascending) and ``weights`` (sum 1).

    Held on the host in float64; immutable. ``meta`` carries free-form settings (model, N,
    BatchNorm mode, timings, ...) that are saved with the spectrum
    (:func:`jaxspec.io.save_spectrum`).

    Example:
      >>> from jaxspec import Spectrum
      >>> s = Spectrum.from_tridiagonal([2.0, 2.0], [1.0])
      >>> s.nodes.tolist(), s.weights.round(3).tolist()
      ([1.0, 3.0], [0.5, 0.5])
    """

    nodes: np.ndarray
    weights: np.ndarray
    num_vectors: int = 1
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        nodes = np.asarray(self.nodes, np.float64).reshape(-1)
        weights = np.asarray(self.weights, np.float64).reshape(-1)
        if nodes.shape != weights.shape:
            raise ValueError(f"nodes {nodes.shape} and weights {weights.shape} differ in shape")
        if nodes.size == 0:
            raise ValueError("a Spectrum needs at least one node")
        if not (np.all(np.isfinite(nodes)) and np.all(np.isfinite(weights))):
            raise ValueError("a Spectrum's nodes and weights must be finite")
        if np.any(weights < 0) or not np.isclose(weights.sum(), 1.0, atol=1e-6):
            raise ValueError(f"weights must be nonnegative and sum to 1 (sum {weights.sum()})")
        order = np.argsort(nodes, kind="stable")
        object.__setattr__(self, "nodes", nodes[order])
        object.__setattr__(self, "weights", weights[order])

    def __eq__(self, other) -> bool:
        if not isinstance(other, Spectrum):
            return NotImplemented
        return (np.array_equal(self.nodes, other.nodes)
                and np.array_equal(self.weights, other.weights)
                and self.num_vectors == other.num_vectors)

    __hash__ = None  # mutable-looking arrays inside: not hashable

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_tridiagonal(cls, alphas, betas, /, *, meta: dict | None = None) -> "Spectrum":
        """Nodes and weights of the tridiagonal T with diagonal ``alphas``, off-diagonal ``betas``.

        Solved by a symmetric eigensolver in float64 (``numpy.linalg.eigh``).

        Example:
          >>> from jaxspec import Spectrum
          >>> Spectrum.from_tridiagonal([1.0], []).nodes.tolist()
          [1.0]
        """
        a = np.asarray(alphas, np.float64).reshape(-1)
        b = np.asarray(betas, np.float64).reshape(-1)
        if b.shape[0] != a.shape[0] - 1:
            raise ValueError(f"need len(betas) == len(alphas) - 1, got {b.shape[0]} and "
                             f"{a.shape[0]}")
        result = LanczosResult(a, np.append(b, 0.0), np.int32(a.shape[0]), np.int32(-1))
        return cls.from_lanczos(result, meta=meta)

    @classmethod
    def from_lanczos(cls, result: LanczosResult, /, *, meta: dict | None = None) -> "Spectrum":
        """The spectrum of a :class:`jaxspec.LanczosResult`, using its ``num_valid`` steps.

        Example:
          >>> import jax.numpy as jnp
          >>> from jaxspec import lanczos, Spectrum
          >>> res = lanczos(lambda v: jnp.array([1.0, 3.0]) * v, jnp.ones(2), 2)
          >>> Spectrum.from_lanczos(res).weights.round(3).tolist()
          [0.5, 0.5]
        """
        pairs = ritz_pairs(result)
        return cls(pairs.values, pairs.weights, meta=dict(meta or {}))

    @classmethod
    def average(cls, spectra: Sequence["Spectrum"], /, *, meta: dict | None = None) -> "Spectrum":
        """One spectrum from several probe vectors: all nodes, each weight divided by their number.

        Example:
          >>> from jaxspec import Spectrum
          >>> s = Spectrum.average([Spectrum([1.0], [1.0]), Spectrum([3.0], [1.0])])
          >>> s.nodes.tolist(), s.weights.tolist(), s.num_vectors
          ([1.0, 3.0], [0.5, 0.5], 2)
        """
        if not spectra:
            raise ValueError("nothing to average")
        total = sum(s.num_vectors for s in spectra)
        nodes = np.concatenate([s.nodes for s in spectra])
        weights = np.concatenate([s.weights * (s.num_vectors / total) for s in spectra])
        return cls(nodes, weights, num_vectors=total, meta=dict(meta or spectra[0].meta))

    # ---- summaries ----------------------------------------------------------------------
    @property
    def lambda_max(self) -> float:
        """Largest Ritz value (converges first to the largest eigenvalue).

        Example:
          >>> from jaxspec import Spectrum
          >>> Spectrum([3.0, -1.0, 0.5], [0.2, 0.3, 0.5]).lambda_max
          3.0
        """
        return float(self.nodes[-1])

    @property
    def lambda_min(self) -> float:
        """Smallest Ritz value (converges first to the smallest eigenvalue).

        Example:
          >>> from jaxspec import Spectrum
          >>> Spectrum([3.0, -1.0, 0.5], [0.2, 0.3, 0.5]).lambda_min
          -1.0
        """
        return float(self.nodes[0])

    def origin_cluster(self, *, origin_tol: float = 1e-3) -> np.ndarray:
        """Mask of the nodes in the cluster at the origin.

        The rule: ``theta_0`` is the node of smallest magnitude; where it lies at the origin,
        ``|theta_0| <= origin_tol * max|theta|``, a node belongs to the origin cluster when
        ``|theta - theta_0| <= origin_tol * max|theta|``. A degenerate mass at the origin that
        Lanczos splits into several nearby nodes is one cluster under this rule. A spectrum with
        no node at the origin (a short run, a definite block) has no cluster.

        Example:
          >>> from jaxspec import Spectrum
          >>> s = Spectrum([-1.0, -1e-6, 1e-6, 5.0], [0.1, 0.4, 0.4, 0.1])
          >>> s.origin_cluster().tolist()
          [False, True, True, False]
          >>> Spectrum([-1.0, 5.0], [0.5, 0.5]).origin_cluster().tolist()
          [False, False]
        """
        theta0 = self.nodes[np.argmin(np.abs(self.nodes))]
        width = origin_tol * np.max(np.abs(self.nodes))
        if abs(theta0) > width:
            return np.zeros(self.nodes.shape, bool)
        return np.abs(self.nodes - theta0) <= width

    def negative(self, *, origin_tol: float = 1e-3) -> NegativeMass:
        """Count and weight of negative Ritz values, the paper's way.

        ``mass`` is the weight of the negative nodes outside :meth:`origin_cluster`, so a split
        of the degenerate mass at the origin is not counted (paper, section 5.3).

        Example:
          >>> from jaxspec import Spectrum
          >>> Spectrum([-1.0, -1e-6, 1e-6, 5.0], [0.1, 0.4, 0.4, 0.1]).negative()
          NegativeMass(count=2, count_separated=1, mass=0.1)
        """
        neg = self.nodes < 0
        sep = neg & ~self.origin_cluster(origin_tol=origin_tol)
        return NegativeMass(int(neg.sum()), int(sep.sum()), float(self.weights[sep].sum()))

    def top_weights(self, k: int = 3, /) -> list[tuple[float, float]]:
        """The ``k`` largest-weight Ritz values as ``(weight, value)``, heaviest first.

        Example:
          >>> from jaxspec import Spectrum
          >>> Spectrum([0.0, 1.0, 2.0], [0.7, 0.2, 0.1]).top_weights(2)
          [(0.7, 0.0), (0.2, 1.0)]
        """
        order = np.argsort(-self.weights, kind="stable")[:k]
        return [(float(self.weights[j]), float(self.nodes[j])) for j in order]

    def moments(self, k: int, /) -> np.ndarray:
        """``[sum_j w_j theta_j^i for i in 0..k]``: estimates of ``tr(A^i) / P``.

        Exact for ``v^T A^i v / v^T v`` when ``i <= 2m - 1``.

        Example:
          >>> from jaxspec import Spectrum
          >>> Spectrum([1.0, 3.0], [0.5, 0.5]).moments(2).tolist()
          [1.0, 2.0, 5.0]
        """
        return np.array([np.sum(self.weights * self.nodes**i) for i in range(k + 1)])

    def density(self, grid, /, *, sigma: float | None = None) -> np.ndarray:
        """Gaussian-smoothed density on ``grid`` (for comparison with tools that smooth).

        ``sigma`` defaults to 1% of the spectral range (of the largest ``|theta|`` where all
        nodes coincide). The paper argues against smoothing for reading off outliers and
        negative mass; this is for overlaying other tools' curves.

        Example:
          >>> import numpy as np
          >>> from jaxspec import Spectrum
          >>> g = np.linspace(-5, 5, 2001)
          >>> d = Spectrum([0.0], [1.0]).density(g, sigma=0.5)
          >>> round(float(np.sum(d) * (g[1] - g[0])), 4)
          1.0
        """
        grid = np.asarray(grid, np.float64)
        if sigma is None:
            spread = self.lambda_max - self.lambda_min
            sigma = 0.01 * (spread if spread > 0 else float(np.max(np.abs(self.nodes))) or 1.0)
        z = (grid[:, None] - self.nodes[None, :]) / sigma
        return (np.exp(-0.5 * z**2) @ self.weights) / (sigma * np.sqrt(2 * np.pi))

    def summary(self, *, origin_tol: float = 1e-3, top: int = 3) -> dict[str, Any]:
        """The numbers a reader looks for first, as a JSON-ready dict.

        Example:
          >>> from jaxspec import Spectrum
          >>> Spectrum([-1.0, 0.0, 4.0], [0.1, 0.8, 0.1]).summary()["lambda_max"]
          4.0
        """
        neg = self.negative(origin_tol=origin_tol)
        return {
            "lambda_max": self.lambda_max,
            "lambda_min": self.lambda_min,
            "num_nodes": int(self.nodes.size),
            "num_vectors": self.num_vectors,
            "num_negative": neg.count,
            "num_negative_separated": neg.count_separated,
            "negative_mass": neg.mass,
            "origin_weight": float(self.weights[self.origin_cluster(origin_tol=origin_tol)].sum()),
            "top_weights": self.top_weights(top),
        }


def probes_symmetry(matvec: Callable, check: bool | None = None, /) -> bool:
    """Whether a run on ``matvec`` first probes that it is one fixed symmetric matrix
    (:func:`jaxspec.assert_symmetric`, three products; :func:`slq_runs` and
    :func:`jaxspec.eigsh` ask): ``check`` where given, else for every matvec but a
    :class:`jaxspec.CurvatureOperator`, symmetric by construction (see :func:`slq_runs`).

    Example:
      >>> from jaxspec.slq import probes_symmetry
      >>> probes_symmetry(abs), probes_symmetry(abs, False)
      (True, False)
    """
    return not isinstance(matvec, CurvatureOperator) if check is None else bool(check)


def probe_dtype(matvec: Callable, dtype=None, /) -> jnp.dtype:
    """The probes' dtype: ``dtype`` if given, else the matvec's own (``matvec.dtype``, as a
    :class:`jaxspec.CurvatureOperator` has), else float32.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.slq import probe_dtype
      >>> probe_dtype(abs).name, probe_dtype(abs, jnp.float16).name
      ('float32', 'float16')
    """
    return jnp.dtype(getattr(matvec, "dtype", jnp.float32) if dtype is None else dtype)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _signs(key: jax.Array, dim: int, dtype) -> jax.Array:
    """``dim`` random signs, one from each bit of ``ceil(dim / 32)`` random 32-bit words
    (``jax.random.rademacher`` draws a 32-bit number per sign: 32 times the random bits, which
    a trace estimate drawing one probe per product pays at every product)."""
    words = jax.random.bits(key, (-(-dim // 32),), jnp.uint32)
    bits = (words[:, None] >> jnp.arange(32, dtype=jnp.uint32)) & 1
    return (1 - 2 * bits.reshape(-1)[:dim].astype(jnp.int32)).astype(dtype)


def random_probe(key: jax.Array, dim: int, /, *, dtype=jnp.float32,
                 distribution: str = "normal") -> jax.Array:
    """A random probe vector with ``E[v v^T] = I``: standard normal or Rademacher (random
    signs, each one bit of a random word).

    Example:
      >>> import jax
      >>> from jaxspec import random_probe
      >>> v = random_probe(jax.random.key(0), 4, distribution="rademacher")
      >>> v.shape, sorted(set(abs(v).tolist()))
      ((4,), [1.0])
    """
    if distribution == "normal":
        return jax.random.normal(key, (dim,), dtype)
    if distribution == "rademacher":
        return _signs(key, int(dim), jnp.dtype(dtype))
    raise ValueError(f"distribution must be 'normal' or 'rademacher', got {distribution!r}")


def slq_runs(
    matvec: Callable[[jax.Array], jax.Array],
    key: jax.Array,
    dim: int,
    num_steps: int,
    /,
    *,
    num_vectors: int = 1,
    dtype=None,
    distribution: str = "normal",
    v0: jax.Array | None = None,
    hooks: Callable[[int, int], Sequence[Any]] | None = None,
    check: bool | None = None,
    reorth: str | None = None,
    **lanczos_kwargs: Any,
) -> list[LanczosResult]:
    """The Lanczos runs behind :func:`slq`, one per probe (e.g. to keep their bases).

    Probe ``i`` is drawn from ``jax.random.split(key, num_vectors)[i]`` unless ``v0`` is
    given (then ``num_vectors`` must be 1); ``hooks(i, num_vectors)`` gives the hooks of run
    ``i`` (:func:`jaxspec.io.slq_hooks`); ``lanczos_kwargs`` go to :func:`jaxspec.run_lanczos`
    (``driver``, ``mesh``, ``shard_basis``, ``chunk_size``, ``tol``, ``return_basis``, ...).
    With ``check``, three products first make sure that the matvec is one fixed symmetric
    matrix (:func:`jaxspec.assert_symmetric`): a callable that changes between calls (dropout
    on, augmentation redrawn, moving BatchNorm statistics) would give a spectrum of nothing.
    ``None`` (default) checks every matvec but a :class:`jaxspec.CurvatureOperator`, which is
    that matrix by construction: one compiled pure function of the weights and the batches,
    whose Hessian, Gauss-Newton and Fisher products are symmetric in exact arithmetic; the
    check would add three products to every run. ``reorth`` (:mod:`jaxspec.reorth`): None
    means ``"partial"``, which keeps T, and so the nodes and weights, those of full
    re-orthogonalisation to working precision while reading the basis at a fraction of the
    steps, unless ``return_basis=True`` asks for the basis: then ``"full"``, whose basis (and
    so every Ritz vector) is orthonormal to working precision, not only to ``sqrt(eps)``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import ritz_pairs, slq_runs
      >>> runs = slq_runs(lambda v: jnp.arange(4.0, dtype=v.dtype) * v, jax.random.key(0), 4, 4,
      ...                 return_basis=True)
      >>> ritz_pairs(runs[0], vectors=[-1]).vectors.shape
      (1, 4)
    """
    if num_vectors < 1:
        raise ValueError(f"num_vectors must be >= 1, got {num_vectors}")
    dtype = probe_dtype(matvec, dtype)
    if v0 is not None:
        if num_vectors != 1:
            raise ValueError("an explicit start vector v0 makes one probe: num_vectors must be 1")
        if np.shape(v0) != (dim,):
            raise ValueError(f"v0 must have shape ({dim},), got {np.shape(v0)}")
        probes = [v0]
    else:
        keys = jax.random.split(key, num_vectors)
        probes = [random_probe(keys[i], dim, dtype=dtype, distribution=distribution)
                  for i in range(num_vectors)]
    if getattr(matvec, "size", None) is not None:  # an operator; a callable meets the probe
        check_dimension(matvec, dim, probes[0].dtype)
    check = probes_symmetry(matvec, check)
    matvec = linearized(matvec, num_steps + 1)  # an operator's products, once for all probes
    if check:
        assert_symmetric(matvec, jax.random.fold_in(key, 1), dim, dtype=probes[0].dtype)
    if reorth is None:
        reorth = "full" if lanczos_kwargs.get("return_basis") else "partial"
    return [run_lanczos(matvec, probe, num_steps, reorth=reorth,
                        hooks=() if hooks is None else hooks(i, num_vectors), **lanczos_kwargs)
            for i, probe in enumerate(probes)]


def slq(
    matvec: Callable[[jax.Array], jax.Array],
    key: jax.Array,
    dim: int,
    num_steps: int,
    /,
    *,
    num_vectors: int = 1,
    dtype=None,
    distribution: str = "normal",
    v0: jax.Array | None = None,
    hooks: Callable[[int, int], Sequence[Any]] | None = None,
    check: bool | None = None,
    meta: dict | None = None,
    reorth: str | None = None,
    **lanczos_kwargs: Any,
) -> Spectrum:
    """Stochastic Lanczos quadrature: the spectral density of ``matvec`` as a :class:`Spectrum`.

    Each of ``num_vectors`` probes (split from ``key``; or the one start vector ``v0``) gets
    its own Lanczos run of ``num_steps`` steps through :func:`jaxspec.run_lanczos`
    (:func:`slq_runs`); the spectra are merged with :meth:`Spectrum.average`, so the weights
    still sum to 1. The paper uses one vector.

    Args:
      matvec: ``v -> A v`` on flat vectors of length ``dim`` (symmetric ``A``): a
        :class:`jaxspec.CurvatureOperator` or any callable.
      key: PRNG key for the probes.
      dim: the dimension P.
      num_steps: Lanczos steps per probe (the paper: 100 empirical, 80 augmented).
      num_vectors: number of probes.
      dtype: working precision of the Lanczos vectors; None: the operator's (``matvec.dtype``,
        as a :class:`jaxspec.CurvatureOperator` has), else float32.
      distribution: ``"normal"`` or ``"rademacher"`` probes.
      v0: an explicit start vector instead of a random probe.
      hooks: ``hooks(i, num_vectors)`` -> the hooks of probe ``i``'s run, e.g.
        ``jaxspec.io.slq_hooks(checkpoint_dir=..., progress="label")``.
      check: first probe that the matvec is one fixed symmetric matrix (three products);
        ``None``: unless it is a :class:`jaxspec.CurvatureOperator` (see :func:`slq_runs`).
      meta: settings recorded with the spectrum.
      reorth: the re-orthogonalisation, ``"partial"`` (None: the default) or ``"full"``: the
        same nodes and weights to working precision (see :func:`slq_runs`).
      **lanczos_kwargs: ``driver``, ``mesh``, ``shard_basis``, ``chunk_size``, ``tol``, ... as
        in :func:`jaxspec.run_lanczos`.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import slq
      >>> A = jnp.diag(jnp.array([-1.0, 0.0, 0.0, 0.0, 10.0], jnp.float32))
      >>> s = slq(lambda v: A @ v, jax.random.key(0), 5, 5)  # float32 probes by default
      >>> round(s.lambda_max, 4), round(s.lambda_min, 4)
      (10.0, -1.0)
    """
    dtype = probe_dtype(matvec, dtype)
    runs = slq_runs(matvec, key, dim, num_steps, num_vectors=num_vectors, dtype=dtype,
                    distribution=distribution, v0=v0, hooks=hooks, check=check,
                    reorth=reorth, **lanczos_kwargs)
    # the steps taken: run_lanczos clamps a request beyond the dimension to it (and warns)
    info = {"num_steps": min(int(num_steps), int(dim)), "dim": int(dim),
            "distribution": distribution,
            "dtype": str(dtype if v0 is None else jnp.dtype(v0.dtype)), **(meta or {})}
    return Spectrum.average([Spectrum.from_lanczos(r) for r in runs], meta=info)
