"""The measurements of the True-Hessian study: data, training, operators, spectra, noise.

* **Networks.** Teacher and student are :class:`jaxspec.models.MLP` (tanh, weights
  ``N(0, 1/fan_in)``, zero biases), split once into a graph definition and a parameter pytree
  (:class:`Network`), so every loss is a pure function of the parameters.
* **Data.** ``x ~ N(0, I_d)``, labels *sampled* from the teacher's softmax
  (:func:`sample_data`).
* **Training.** ``optax.adam`` with a cosine decay to 0, a fixed number of steps
  (:func:`train_student`).
* **Operators.** The Hessian of the mean cross-entropy over a data set is a
  :func:`jaxspec.curvature_operator` of :meth:`Network.weighted_loss` over zero-weight-padded
  batches of one shape (:func:`padded`), so one compiled HVP serves every data set of the study.
* **Spectra and noise.** SLQ with the True Hessian's extremal Ritz vectors
  (:func:`spectrum_with_ritz_vectors`), the noise variance along random and along those
  directions (:func:`noise_statistics`), the per-sample tails (:func:`per_sample_stats`) and the
  moments of a noise spectrum (:func:`noise_spectrum_stats`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import jaxspec
from jaxspec import Spectrum, rmt
from jaxspec.kinds import ggn_mv
from jaxspec.models import MLP, cross_entropy

__all__ = ["Network", "difference", "evaluate", "hessian_operator", "make_mlp",
           "noise_couplings", "noise_spectrum_stats", "noise_statistics", "num_params", "padded",
           "per_sample_stats", "rayleigh_quotient",
           "reduce_for", "sample_data", "seed_int", "spectrum_with_ritz_vectors",
           "train_student"]


# ---- networks ---------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Network:
    """An NNX model as pure functions of its parameter pytree (``nnx.split`` once).

    Hashable and compared by its graph definition, so two networks of one architecture share
    every compiled program (jit caches on the bound methods, which the operators hold as their
    ``loss_fn``).

    Example:
      >>> import jax.numpy as jnp
      >>> from experiments.true_hessian.measure import make_mlp
      >>> net, params = make_mlp([3, 5, 2], 0)
      >>> net.apply(params, jnp.ones((4, 3))).shape, net is make_mlp([3, 5, 2], 1)[0]
      ((4, 2), True)
    """

    graphdef: Any

    def apply(self, params: Any, x: jax.Array, /) -> jax.Array:
        """The logits.

        Example:
          >>> import jax.numpy as jnp
          >>> from experiments.true_hessian.measure import make_mlp
          >>> net, params = make_mlp([3, 2], 0)
          >>> net.apply(params, jnp.zeros((1, 3))).tolist()   # zero biases
          [[0.0, 0.0]]
        """
        return nnx.merge(self.graphdef, params)(x)

    def loss(self, params: Any, batch: dict[str, jax.Array], /) -> jax.Array:
        """Mean cross-entropy on ``batch = {"x", "y"}`` (:func:`jaxspec.models.cross_entropy`).

        Example:
          >>> import jax, jax.numpy as jnp
          >>> from experiments.true_hessian.measure import make_mlp
          >>> net, params = make_mlp([3, 2], 0)
          >>> params = jax.tree.map(jnp.zeros_like, params)
          >>> round(float(net.loss(params, {"x": jnp.ones((4, 3)), "y": jnp.zeros(4, int)})), 4)
          0.6931
        """
        return cross_entropy(self.apply(params, batch["x"]), batch["y"])

    def weighted_loss(self, params: Any, batch: dict[str, jax.Array], /) -> jax.Array:
        """``sum_i w_i nll_i / B`` on ``batch = {"x", "y", "w"}``: the loss of every Hessian.

        With ``w_i = N' / N`` on the N real samples and 0 on the padding up to ``N'`` (whole
        batches, :func:`padded`), the data-set mean over the ``N'`` samples is exactly the mean
        cross-entropy of the N real ones, and every batch of every data set has one shape.

        Example:
          >>> import jax.numpy as jnp
          >>> from experiments.true_hessian.measure import make_mlp, padded
          >>> net, params = make_mlp([3, 2], 0)
          >>> x, y = jnp.arange(9.0).reshape(3, 3) / 9, jnp.array([0, 1, 0])
          >>> b = {k: jnp.asarray(v) for k, v in padded(x, y, 4).items()}
          >>> bool(jnp.isclose(net.weighted_loss(params, b), net.loss(params, {"x": x, "y": y})))
          True
        """
        return self.output_loss(self.logits(params, batch), batch)

    def logits(self, params: Any, batch: dict[str, jax.Array], /) -> jax.Array:
        """The logits of ``batch["x"]``: the ``apply`` of :meth:`split_loss`.

        Example:
          >>> import numpy as np
          >>> from experiments.true_hessian.measure import make_mlp
          >>> net, params = make_mlp([3, 2], 0)
          >>> net.logits(params, {"x": np.zeros((4, 3), np.float32)}).shape
          (4, 2)
        """
        return self.apply(params, batch["x"])

    @staticmethod
    def output_loss(logits: jax.Array, batch: dict[str, jax.Array], /) -> jax.Array:
        """``sum_i w_i nll_i / B`` of the logits (the ``output_loss`` of :meth:`split_loss`).

        Example:
          >>> import jax.numpy as jnp
          >>> from experiments.true_hessian.measure import Network
          >>> b = {"x": jnp.zeros((2, 1)), "y": jnp.array([0, 1]), "w": jnp.array([2.0, 0.0])}
          >>> round(float(Network.output_loss(jnp.zeros((2, 2)), b)), 4)   # 2 log 2 / 2
          0.6931
        """
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
        return jnp.sum(batch["w"] * nll) / batch["x"].shape[0]

    def split_loss(self) -> jaxspec.SplitLoss:
        """:meth:`weighted_loss` split at the logits, for the Gauss-Newton kind (one instance
        per network, so the operators share their compiled programs).

        Example:
          >>> from experiments.true_hessian.measure import make_mlp
          >>> net, _ = make_mlp([3, 2], 0)
          >>> net.split_loss() is net.split_loss()
          True
        """
        return _split_loss(self)


_NETWORKS: dict[Network, Network] = {}


@functools.lru_cache(maxsize=None)
def _split_loss(net: Network) -> jaxspec.SplitLoss:
    return jaxspec.SplitLoss(net.logits, Network.output_loss)


def seed_int(*parts: int) -> int:
    """One 32-bit seed from several integers (``numpy.random.SeedSequence``).

    Example:
      >>> from experiments.true_hessian.measure import seed_int
      >>> seed_int(0, 5, 1) == seed_int(0, 5, 1) != seed_int(0, 5, 2)
      True
    """
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def make_mlp(widths: Sequence[int], seed: int, /) -> tuple[Network, Any]:
    """A tanh :class:`jaxspec.models.MLP` ``widths[0] -> ... -> widths[-1]`` (weights
    ``N(0, 1/fan_in)``, zero biases, float32): its :class:`Network` and parameters.

    Example:
      >>> from experiments.true_hessian.measure import make_mlp, num_params
      >>> num_params(make_mlp([16, 48, 24, 4], 0)[1])   # the default study's P
      2092
    """
    model = MLP(widths[-1], in_features=widths[0], hidden=tuple(widths[1:-1]),
                activation=jax.nn.tanh, init="normal", rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    net = Network(graphdef)
    # One instance per architecture: bound methods compare their ``self`` by identity, and
    # the operators' ``loss_fn`` (``net.weighted_loss``) is part of every jit cache key.
    return _NETWORKS.setdefault(net, net), params


def num_params(params: Any, /) -> int:
    """Number of scalar parameters.

    Example:
      >>> import numpy as np
      >>> from experiments.true_hessian.measure import num_params
      >>> num_params({"w": np.zeros((3, 2)), "b": np.zeros(2)})
      8
    """
    return int(sum(np.size(leaf) for leaf in jax.tree.leaves(params)))


@functools.partial(jax.jit, static_argnums=0)
def _eval_sums(net: Network, params, x, y, w):
    logits = net.apply(params, x)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return logits, jnp.sum(w * nll), jnp.sum(w * (jnp.argmax(logits, -1) == y))


def _padded_chunks(x: np.ndarray, y: np.ndarray, chunk: int):
    """``(x, y, w, real)`` per chunk, zero-weight padded to ``chunk`` rows (one shape)."""
    for start in range(0, x.shape[0], chunk):
        real = min(chunk, x.shape[0] - start)
        pad = chunk - real
        w = np.concatenate([np.ones(real, np.float32), np.zeros(pad, np.float32)])
        yield (np.concatenate([x[start:start + real], np.zeros((pad,) + x.shape[1:], x.dtype)]),
               np.concatenate([y[start:start + real], np.zeros(pad, y.dtype)]), w, real)


def evaluate(net: Network, params: Any, x: np.ndarray, y: np.ndarray, /, *,
             chunk: int = 8192) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over ``(x, y)``, in padded chunks of one shape.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from experiments.true_hessian.measure import evaluate, make_mlp
      >>> net, params = make_mlp([3, 2], 0)
      >>> loss, acc = evaluate(net, params, np.zeros((5, 3), np.float32), np.zeros(5, np.int32))
      >>> round(loss, 4), acc
      (0.6931, 1.0)
    """
    total_loss = total_acc = 0.0
    for xb, yb, w, _ in _padded_chunks(x, y, chunk):
        _, loss, acc = _eval_sums(net, params, xb, yb, w)
        total_loss += float(loss)
        total_acc += float(acc)
    return total_loss / x.shape[0], total_acc / x.shape[0]


# ---- data -------------------------------------------------------------------------------------

def sample_data(teacher: Network, params: Any, seed: int | Sequence[int], n: int, /, *,
                scale: float, chunk: int = 8192) -> dict[str, np.ndarray]:
    """``n`` samples of the teacher's distribution.

    ``x ~ N(0, I_d)`` (float32, NumPy), ``y ~ softmax(scale * teacher(x))`` (int32, Gumbel-max
    in float64 on the host), plus the teacher's entropy and top probability per sample (their
    means are the Bayes-optimal loss and accuracy).

    Example:
      >>> from experiments.true_hessian.measure import make_mlp, sample_data
      >>> net, params = make_mlp([4, 8, 3], 0)
      >>> d = sample_data(net, params, 1, 5, scale=2.0)
      >>> d["x"].shape, d["y"].dtype, bool(((d["y"] >= 0) & (d["y"] < 3)).all())
      ((5, 4), dtype('int32'), True)
    """
    rng = np.random.default_rng(seed)
    dim = int(np.shape(params["layers"][0]["kernel"])[0])
    x = rng.standard_normal((n, dim), np.float32)
    logits = np.concatenate([np.asarray(_eval_sums(teacher, params, xb, yb, w)[0])[:real]
                             for xb, yb, w, real in _padded_chunks(x, np.zeros(n, np.int32),
                                                                   chunk)])
    logits = scale * logits.astype(np.float64)
    y = np.argmax(logits + rng.gumbel(size=logits.shape), -1).astype(np.int32)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    probs = np.exp(logp)
    return {"x": x, "y": y, "entropy": -(probs * logp).sum(-1), "top_prob": probs.max(-1)}


# ---- training ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _trainer(net: Network, learning_rate: float, total_steps: int):
    opt = optax.adam(optax.cosine_decay_schedule(learning_rate, total_steps))

    @jax.jit
    def run(params, opt_state, xb, yb):
        def step(carry, batch):
            p, s = carry
            loss, g = jax.value_and_grad(net.loss)(p, {"x": batch[0], "y": batch[1]})
            updates, s = opt.update(g, s, p)
            return (optax.apply_updates(p, updates), s), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (xb, yb))
        return params, opt_state, losses

    return opt, run


def train_student(net: Network, params: Any, x: np.ndarray, y: np.ndarray, /, *, steps: int,
                  batch_size: int, learning_rate: float, seed: int = 0,
                  input_noise: float = 0.0, chunk: int = 250) -> tuple[Any, np.ndarray]:
    """``optax.adam`` (cosine decay to 0) on the mean cross-entropy for ``steps`` steps.

    Mini-batches of ``batch_size`` are cut from consecutive reshuffled epochs (a batch may
    straddle two epochs, so ``N < batch_size`` works). ``input_noise > 0`` adds fresh Gaussian
    jitter of that std to every batch's inputs. Steps run in jitted ``lax.scan`` chunks of a
    fixed shape: one compilation serves every N.

    Returns:
      ``(params, losses)``: the final parameters and the per-step mini-batch losses.

    Example:
      >>> import numpy as np
      >>> from experiments.true_hessian.measure import make_mlp, train_student
      >>> net, p = make_mlp([2, 8, 2], 0)
      >>> x = np.random.default_rng(0).normal(size=(64, 2)).astype(np.float32)
      >>> y = (x[:, 0] > 0).astype(np.int32)
      >>> p, losses = train_student(net, p, x, y, steps=200, batch_size=32, learning_rate=0.05)
      >>> bool(losses[-20:].mean() < 0.3 * losses[:20].mean())
      True
    """
    n = x.shape[0]
    rng = np.random.default_rng(seed)
    total = steps * batch_size
    order = np.concatenate([rng.permutation(n) for _ in range(-(-total // n))])[:total]
    order = order.reshape(steps, batch_size)
    opt, run = _trainer(net, float(learning_rate), int(steps))
    opt_state = opt.init(params)
    chunk = max(d for d in range(1, min(chunk, steps) + 1) if steps % d == 0)  # one shape
    losses = []
    for start in range(0, steps, chunk):
        idx = order[start:start + chunk]
        xb = x[idx]
        if input_noise:
            xb = xb + np.float32(input_noise) * rng.standard_normal(xb.shape, np.float32)
        params, opt_state, loss = run(params, opt_state, xb, y[idx])
        losses.append(np.asarray(loss))
    return params, np.concatenate(losses)


# ---- Hessian operators ------------------------------------------------------------------------

def padded(x: np.ndarray, y: np.ndarray, batch_size: int, /) -> dict[str, np.ndarray]:
    """``{"x", "y", "w"}`` zero-weight padded to whole batches, for
    :meth:`Network.weighted_loss` (the real samples weigh ``N' / N``).

    Example:
      >>> import numpy as np
      >>> from experiments.true_hessian.measure import padded
      >>> d = padded(np.ones((3, 2), np.float32), np.zeros(3, np.int32), 2)
      >>> d["x"].shape, (d["w"] * 3).round(4).tolist()
      ((4, 2), [4.0, 4.0, 4.0, 0.0])
    """
    n = x.shape[0]
    total = -(-n // batch_size) * batch_size
    pad = total - n
    w = np.zeros(total, np.float32)
    w[:n] = total / n
    return {"x": np.concatenate([np.asarray(x), np.zeros((pad,) + x.shape[1:], x.dtype)]),
            "y": np.concatenate([np.asarray(y), np.zeros(pad, y.dtype)]), "w": w}


def reduce_for(driver: str, /) -> str:
    """The operators' batch reduction for a study ``driver``: ``auto``, ``host`` or ``scan``.

    Example:
      >>> from experiments.true_hessian.measure import reduce_for
      >>> reduce_for("compiled"), reduce_for("auto")
      ('scan', 'auto')
    """
    return {"auto": "auto", "host": "host", "compiled": "scan"}[driver]


def hessian_operator(net: Network, params: Any, x: np.ndarray, y: np.ndarray, /, *,
                     batch_size: int, reduce: Any = "auto",
                     kind: str = "hessian") -> jaxspec.CurvatureOperator:
    """The Hessian (or with ``kind="ggn"`` the Gauss-Newton matrix) of the mean cross-entropy
    over ``(x, y)``, over padded batches of ``batch_size`` (NumPy batches stay on the host for
    the host reduction).

    Example:
      >>> import numpy as np
      >>> from experiments.true_hessian.measure import hessian_operator, make_mlp
      >>> net, params = make_mlp([3, 4, 2], 0)
      >>> x = np.random.default_rng(0).normal(size=(7, 3)).astype(np.float32)
      >>> op = hessian_operator(net, params, x, np.zeros(7, np.int32), batch_size=4)
      >>> op.shape, op.data.batches["x"].shape
      ((26, 26), (2, 4, 3))
    """
    data = jaxspec.batch_dataset(padded(x, y, batch_size), batch_size)
    loss = net.weighted_loss if kind == "hessian" else net.split_loss()
    return jaxspec.curvature_operator(loss, params, data, reduce=reduce, kind=kind)


def difference(a: Callable, b: Callable, v: jax.Array, /) -> jax.Array:
    """``a(v) - b(v)``: with ``jax.tree_util.Partial(difference, a, b)`` the noise matrix
    ``H_N - H_M`` as a pytree matvec (its operators' arrays are arguments, not constants).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from experiments.true_hessian.measure import difference
      >>> jax.tree_util.Partial(difference, lambda v: 3 * v, lambda v: v)(jnp.ones(2)).tolist()
      [2.0, 2.0]
    """
    return a(v) - b(v)


def rayleigh_quotient(op: Callable, u: np.ndarray, /) -> float:
    """``u^T A u / u^T u`` of the matvec ``op`` (one product; the dot in float64): the held-out
    matrix along the True Hessian's extremal Ritz vector, against which the held-out extremal
    eigenvalue's shift beyond first order is measured (:mod:`experiments.true_hessian.theory`).

    Example:
      >>> import numpy as np
      >>> from experiments.true_hessian.measure import rayleigh_quotient
      >>> rayleigh_quotient(lambda v: v * np.array([1.0, 3.0], np.float32), np.ones(2))
      2.0
    """
    u64 = np.asarray(u, np.float64)
    au = np.asarray(op(jnp.asarray(u)), np.float64)
    return float(u64 @ au / (u64 @ u64))


def spectrum_with_ritz_vectors(op: Callable, key: jax.Array, dim: int, num_steps: int, /, *,
                               num_vectors: int = 1, hooks: Any = None, driver: str = "auto",
                               meta: dict | None = None) -> tuple[Spectrum, dict[str, Any],
                                                                  dict[str, Any]]:
    """:func:`jaxspec.slq` (same probes, same spectrum) and every Ritz pair of the probe run
    with the largest Ritz value (``top``) and of the one with the smallest (``bottom``).

    Each pair set is ``{"values", "residuals", "vectors"}`` (:func:`jaxspec.ritz_pairs`,
    ascending; ``vectors`` ``(k, P)`` float32 unit rows), so ``top["vectors"][-1]`` is the top
    Ritz vector and ``top["residuals"][-1]`` its residual norm ``|A y - theta y|``.

    Example:
      >>> import jax, jax.numpy as jnp, numpy as np
      >>> from experiments.true_hessian.measure import spectrum_with_ritz_vectors
      >>> op = lambda v: jnp.arange(1.0, 7.0, dtype=jnp.float32) * v
      >>> s, top, bottom = spectrum_with_ritz_vectors(op, jax.random.key(0), 6, 6)
      >>> round(s.lambda_max, 4), int(np.abs(top["vectors"][-1]).argmax()), top["values"].shape
      (6.0, 5, (6,))
      >>> int(np.abs(bottom["vectors"][0]).argmax()), bool(top["residuals"][-1] < 1e-3)
      (0, True)
    """
    runs = jaxspec.slq_runs(op, key, dim, num_steps, num_vectors=num_vectors,
                            dtype=jnp.float32, hooks=hooks, driver=driver, return_basis=True)
    pairs = [jaxspec.ritz_pairs(r) for r in runs]
    picked = {}
    for side, i in (("top", int(np.argmax([p.values[-1] for p in pairs]))),
                    ("bottom", int(np.argmin([p.values[0] for p in pairs])))):
        full = jaxspec.ritz_pairs(runs[i], vectors=True)
        picked[side] = {"values": np.asarray(full.values), "residuals": np.asarray(full.residuals),
                        "vectors": np.asarray(full.vectors, np.float32)}
    info = {"num_steps": int(num_steps), "dim": int(dim), "distribution": "normal",
            "dtype": "float32", **(meta or {})}
    spectrum = Spectrum.average([Spectrum.from_lanczos(r) for r in runs], meta=info)
    return spectrum, picked["top"], picked["bottom"]


# ---- noise statistics -------------------------------------------------------------------------

def noise_statistics(net: Network, params: Any, ops: dict[str, Any], fresh_x: np.ndarray,
                     fresh_y: np.ndarray, probes: np.ndarray, directions: np.ndarray, /, *,
                     batch_size: int, q: float, reduce: Any = "auto") -> dict[str, Any]:
    """The per-sample Hessian noise variance ``sigma^2`` and the direct check of its scale.

    ``sigma^2`` comes from :func:`jaxspec.rmt.estimate_noise_variance` on disjoint batches of
    ``batch_size`` fresh samples (a property of the distribution at these weights), along the
    random ``probes`` and then along ``directions`` (the True Hessian's top and bottom Ritz
    vectors: ``sigma2_dir``). The direct check is ``|(H_N - H_M) v|^2 / |v|^2`` over the
    probes for ``ops["empirical"]`` and ``ops["heldout"]`` against ``ops["true"]``; its
    sampling-model value is ``(q + P/M) sigma^2`` (``s2_model``).

    Example:
      >>> import numpy as np
      >>> from experiments.true_hessian.measure import (hessian_operator, make_mlp,
      ...                                               noise_statistics, num_params)
      >>> net, params = make_mlp([3, 4, 2], 0)
      >>> rng = np.random.default_rng(0)
      >>> x, y = rng.normal(size=(40, 3)).astype(np.float32), rng.integers(0, 2, 40)
      >>> ops = {k: hessian_operator(net, params, x[s], y[s], batch_size=10)
      ...        for k, s in (("empirical", slice(0, 10)), ("heldout", slice(10, 20)),
      ...                     ("true", slice(0, 40)))}
      >>> v = rng.normal(size=(2, num_params(params))).astype(np.float32)
      >>> r = noise_statistics(net, params, ops, x, y, v, v, batch_size=10, q=2.6)
      >>> r["sigma2"] > 0, r["sigma2_dir"].shape
      (True, (2,))
    """
    m = fresh_x.shape[0]
    num_batches = m // batch_size
    batch_ops = [hessian_operator(net, params, fresh_x[i * batch_size:(i + 1) * batch_size],
                                  fresh_y[i * batch_size:(i + 1) * batch_size],
                                  batch_size=batch_size, reduce=reduce)
                 for i in range(num_batches)]
    true_hv: list[jax.Array] = []

    def full_hvp(v):
        true_hv.append(ops["true"].mv(v))
        return true_hv[-1]

    def estimate(vs, full):
        return rmt.estimate_noise_variance(lambda i, v: batch_ops[i].mv(v), jnp.asarray(vs),
                                           num_batches=num_batches, batch_size=batch_size,
                                           num_samples=m, full_hvp=full)

    nv = estimate(probes, full_hvp)
    nv_dir = estimate(directions, ops["true"].mv)
    sigma2 = float(nv.sigma2)
    direct = {}
    for name in ("empirical", "heldout"):
        direct[name] = float(np.mean([
            np.sum((np.asarray(ops[name].mv(jnp.asarray(v))) - np.asarray(hv)) ** 2)
            / np.sum(v * v) for v, hv in zip(probes, true_hv)]))
    stderr = float(nv.stderr)
    return {"sigma2": sigma2, "sigma2_stderr": stderr if math.isfinite(stderr) else None,
            "sigma2_dir": np.asarray(nv_dir.per_probe, np.float64),
            "num_batches": num_batches, "direct_s2_train": direct["empirical"],
            "direct_s2_heldout": direct["heldout"],
            "direct_s2_model": (q + num_params(params) / m) * sigma2}


@functools.partial(jax.jit, static_argnums=(0, 5))
def _per_sample_hvps(net: Network, params, x, y, v, kind="hessian"):
    """Per-sample products ``h_i v``: Hessians, or with ``kind="ggn"`` Gauss-Newton terms."""
    tangent = jax.flatten_util.ravel_pytree(params)[1](v)

    def one(xi, yi):
        batch = {"x": xi[None], "y": yi[None], "w": jnp.ones(1, jnp.float32)}
        hv = (jaxspec.hvp(net.weighted_loss, params, batch, tangent) if kind == "hessian"
              else ggn_mv(net.split_loss(), params, batch, tangent))
        return jax.flatten_util.ravel_pytree(hv)[0]

    return jax.vmap(one)(x, y)


def noise_couplings(net: Network, params: Any, x: np.ndarray, y: np.ndarray, u: np.ndarray,
                    basis: np.ndarray, /, *, chunk: int = 512,
                    kind: str = "hessian") -> dict[str, Any]:
    """The coupling of the per-sample noise ``X_i = h_i - H`` (``h_i`` sample ``i``'s Hessian,
    or with ``kind="ggn"`` its Gauss-Newton term) to a unit direction ``u``,
    resolved over the orthonormal rows ``v_j`` of ``basis``: ``c_j = E[(v_j^T X u)^2]`` and
    the rest ``E|X u|^2 - sum_j c_j`` (the part outside the basis), from the per-sample HVPs
    ``h_i u`` of the samples ``(x, y)`` (centred by their mean). ``len(x)`` should be a multiple
    of ``chunk`` (one compiled shape).

    Example:
      >>> import numpy as np
      >>> from experiments.true_hessian.measure import make_mlp, noise_couplings, num_params
      >>> net, params = make_mlp([3, 4, 2], 0)
      >>> rng = np.random.default_rng(0)
      >>> x, y = rng.normal(size=(64, 3)).astype(np.float32), rng.integers(0, 2, 64)
      >>> basis = np.eye(num_params(params), dtype=np.float32)[:5]
      >>> d = noise_couplings(net, params, x, y, basis[0], basis, chunk=32)
      >>> d["couplings"].shape, bool(d["total"] >= d["couplings"].sum())
      ((5,), True)
    """
    w = np.concatenate([np.asarray(_per_sample_hvps(net, params, x[s:s + chunk],
                                                    y[s:s + chunk], jnp.asarray(u), kind))
                        for s in range(0, x.shape[0], chunk)]).astype(np.float64)
    w -= w.mean(0)
    c = ((w @ np.asarray(basis, np.float64).T) ** 2).mean(0)
    total = float((w ** 2).sum(1).mean())
    return {"couplings": c, "total": total, "rest": max(0.0, total - float(c.sum())),
            "count": int(x.shape[0])}


def per_sample_stats(net: Network, params: Any, x: np.ndarray, y: np.ndarray, v: jax.Array, /,
                     *, chunk: int = 512) -> dict[str, float]:
    """Heavy tails of the per-sample Hessian noise ``u_i = H_i v`` (one probe ``v``).

    ``len(x)`` should be a multiple of ``chunk`` (one compiled shape). Gaussian elements would
    give excess kurtosis 0 and a top-1% variance share of about 0.01.

    Example:
      >>> import numpy as np
      >>> from experiments.true_hessian.measure import make_mlp, num_params, per_sample_stats
      >>> net, params = make_mlp([3, 4, 2], 0)
      >>> rng = np.random.default_rng(0)
      >>> x, y = rng.normal(size=(64, 3)).astype(np.float32), rng.integers(0, 2, 64)
      >>> v = rng.normal(size=num_params(params)).astype(np.float32)
      >>> d = per_sample_stats(net, params, x, y, v, chunk=32)
      >>> d["count"], d["sigma2_per_sample"] > 0
      (64, True)
    """
    u = np.concatenate([np.asarray(_per_sample_hvps(net, params, x[s:s + chunk],
                                                    y[s:s + chunk], v))
                        for s in range(0, x.shape[0], chunk)])  # (n, P) float32
    n, p = u.shape
    d = u - u.mean(0, dtype=np.float64).astype(u.dtype)
    del u
    var = (d ** 2).mean(0, dtype=np.float64)
    ok = var > 1e-30 * var.max()
    kurt = (d[:, ok] ** 4).mean(0, dtype=np.float64) / var[ok] ** 2 - 3.0
    norms = np.sort((d ** 2).sum(1, dtype=np.float64))[::-1]
    top = max(1, n // 100)
    vv = float(np.asarray(v, np.float64) @ np.asarray(v, np.float64))
    return {"count": int(n), "sigma2_per_sample": float(norms.sum() / ((n - 1) * p * vv)),
            "excess_kurtosis_median": float(np.median(kurt)),
            "excess_kurtosis_mean": float(np.mean(kurt)),
            "top1pct_variance_share": float(norms[:top].sum() / norms.sum())}


def noise_spectrum_stats(spectrum: Spectrum, s2_model: float, /) -> dict[str, float]:
    """The noise matrix's spectrum against a GOE of element variance ``s2_model``: extremes
    over the semicircle edge ``2 s`` (``s = sqrt(s2_model)``), variance over ``s^2``, skewness.

    Example:
      >>> from jaxspec import Spectrum
      >>> from experiments.true_hessian.measure import noise_spectrum_stats
      >>> d = noise_spectrum_stats(Spectrum([-2.0, 2.0], [0.5, 0.5]), 1.0)
      >>> d["top_over_edge"], d["bottom_over_edge"], d["skewness"]
      (1.0, 1.0, 0.0)
    """
    m = spectrum.moments(3)
    var = m[2] - m[1] ** 2
    m3c = m[3] - 3 * m[1] * m[2] + 2 * m[1] ** 3
    edge = 2 * math.sqrt(s2_model)
    return {"lambda_max": spectrum.lambda_max, "lambda_min": spectrum.lambda_min,
            "semicircle_edge": edge, "top_over_edge": spectrum.lambda_max / edge,
            "bottom_over_edge": -spectrum.lambda_min / edge,
            "variance_over_s2": float(var / s2_model), "mean": float(m[1]),
            "skewness": float(m3c / var ** 1.5) if var > 0 else float("nan")}
