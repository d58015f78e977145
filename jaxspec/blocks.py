"""Parameter blocks: a curvature operator restricted to some of the parameters, chosen by path.

A block is a set of leaves of the parameter pytree, chosen by a *selector*: a regex searched in
``jax.tree_util.keystr(path)`` (e.g. ``"fc"``, ``"norms.*scale"``, ``r"\\['conv1'\\]"``) or a
predicate ``(path, leaf) -> bool``. :func:`restrict` (:meth:`jaxspec.CurvatureOperator.restrict`)
turns an operator of any kind, reduction and transform into the operator of the diagonal block
``A[S, S]``: its vectors hold the selected parameters only, and each product differentiates with
respect to the selected leaves only (the others are held at their values), so it costs less than
a full product. The selection is stored as a static tuple of leaf indices: a restricted operator
is still a pytree, an argument of ``jax.jit`` that compiles once for all parameter values of the
same shapes.

:func:`param_blocks` names a model's natural blocks (each layer's weights, each BatchNorm's scale
and bias, ...) and :func:`block_spectra` runs SLQ on each of them;
:func:`jaxspec.plotting.block_spectra_plot` draws the result.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping, Sequence, Union

import jax
import jax.numpy as jnp

from jaxspec.slq import Spectrum, random_probe, slq

__all__ = ["Selector", "block_spectra", "param_blocks", "restrict", "select_leaves"]

Selector = Union[str, "re.Pattern[str]", Callable[[tuple, Any], bool]]
"""A regex over ``jax.tree_util.keystr(path)`` (``re.search``) or a predicate ``(path, leaf)``."""


def select_leaves(params: Any, select: Selector, /) -> tuple[int, ...]:
    """The indices (in ``jax.tree.leaves(params)`` order) of the leaves ``select`` picks.

    Args:
      params: the parameter pytree.
      select: a regex (``str`` or compiled) searched in each leaf's
        ``jax.tree_util.keystr(path)``, or a predicate ``(path, leaf) -> bool``.

    Returns:
      The selected indices, ascending; never empty.

    Raises:
      TypeError: ``select`` is neither a regex nor a callable.
      ValueError: an invalid regex, or one that selects nothing (the message lists the paths).

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.blocks import select_leaves
      >>> params = {"fc": {"b": jnp.zeros(2), "w": jnp.zeros((3, 2))},
      ...           "norm": {"scale": jnp.ones(3)}}
      >>> select_leaves(params, "fc"), select_leaves(params, lambda path, x: x.ndim == 1)
      ((0, 1), (0, 2))
    """
    leaves = jax.tree_util.tree_leaves_with_path(params)
    if isinstance(select, (str, re.Pattern)):
        try:
            pattern = re.compile(select)
        except re.error as e:
            raise ValueError(f"select: {select!r} is not a valid regex ({e})") from None
        chosen = [i for i, (p, _) in enumerate(leaves) if pattern.search(jax.tree_util.keystr(p))]
    elif callable(select):
        chosen = [i for i, (p, x) in enumerate(leaves) if bool(select(p, x))]
    else:
        raise TypeError("select must be a regex (str or re.Pattern) searched in "
                        "jax.tree_util.keystr(path), or a predicate (path, leaf) -> bool; got "
                        f"{type(select).__name__}")
    if not chosen:
        paths = [jax.tree_util.keystr(p) for p, _ in leaves]
        shown = ", ".join(paths[:12]) + (f", ... ({len(paths)} in all)" if len(paths) > 12 else "")
        raise ValueError(f"select: {select!r} selects no parameter; the paths are: {shown}")
    return tuple(chosen)


def restrict(op: Any, select: Selector, /) -> Any:
    """``op`` restricted to the parameters ``select`` picks: :meth:`CurvatureOperator.restrict`.

    Example:
      >>> import jax.numpy as jnp, jaxspec
      >>> loss = lambda p, x: jnp.mean(x) * jnp.sum(p["w"] ** 2 * p["b"])
      >>> op = jaxspec.curvature_operator(loss, {"b": jnp.full(2, 3.0), "w": jnp.ones(2)},
      ...                                 jaxspec.batch_dataset(jnp.ones(2), 2))
      >>> sub = jaxspec.restrict(op, "w")
      >>> sub.size, sub.mv(jnp.array([1.0, 0.0])).tolist()   # d2/dw2 = 2 b
      (2, [6.0, 0.0])
    """
    if not hasattr(op, "restrict"):
        raise TypeError(f"restrict needs a jaxspec.CurvatureOperator, got {type(op).__name__}")
    return op.restrict(select)


def _key_name(key: Any) -> str:
    for attr in ("key", "idx", "name"):  # DictKey / FlattenedIndexKey, SequenceKey, GetAttrKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _parent(path: tuple) -> tuple:
    """The path of the module holding a leaf: without the leaf's name (and an NNX ``.value``)."""
    path = tuple(path)
    while path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "value":
        path = path[:-1]
    return path[:-1]


def _exact(paths: Sequence[str]) -> re.Pattern:
    return re.compile("^(?:" + "|".join(re.escape(p) for p in paths) + ")$")


def param_blocks(params: Any, /, by: str | Sequence[str] | Mapping[str, Selector] = "layer"
                 ) -> dict[str, Selector]:
    """Named blocks of ``params``, each a selector for :meth:`CurvatureOperator.restrict`.

    Args:
      params: the parameter pytree (e.g. from :func:`jaxspec.models.hessian_loss`).
      by: ``"layer"``: the leaves grouped by the module holding them (each convolution's or
        linear layer's kernel and bias, each BatchNorm's scale and bias), named by the module's
        path (``"convs/0"``, ``"fc"``; a leaf at the top level is its own block);
        ``"leaf"``: every leaf its own block; a sequence of regexes: one block each, named by
        the regex; a mapping ``name -> selector``: those blocks.

    Returns:
      ``{name: selector}`` in the order of the leaves (for ``"layer"``/``"leaf"``; the
      selectors are exact regexes of the paths) or of ``by``. Every block selects something.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.blocks import param_blocks
      >>> params = {"conv": {"kernel": jnp.zeros((3, 3, 1, 2))},
      ...           "bn": {"bias": jnp.zeros(2), "scale": jnp.ones(2)},
      ...           "fc": {"bias": jnp.zeros(3), "kernel": jnp.zeros((2, 3))}}
      >>> list(param_blocks(params))
      ['bn', 'conv', 'fc']
      >>> bool(param_blocks(params)["bn"].match("['bn']['scale']"))   # an exact regex
      True
      >>> list(param_blocks(params, by=["kernel", "scale|bias"]))
      ['kernel', 'scale|bias']
    """
    if isinstance(by, str) and by in ("layer", "leaf"):
        groups: dict[str, list[str]] = {}
        for path, _ in jax.tree_util.tree_leaves_with_path(params):
            owner = _parent(path) if by == "layer" else tuple(path)
            name = "/".join(_key_name(k) for k in (owner or tuple(path)))
            groups.setdefault(name, []).append(jax.tree_util.keystr(path))
        return {name: _exact(paths) for name, paths in groups.items()}
    if isinstance(by, str):
        raise ValueError(f"by must be 'layer', 'leaf', a sequence of regexes or a mapping of "
                         f"selectors; got {by!r}")
    if isinstance(by, Mapping):
        blocks = dict(by)
    elif isinstance(by, Sequence) and all(isinstance(s, (str, re.Pattern)) for s in by):
        blocks = {s if isinstance(s, str) else s.pattern: s for s in by}
    else:
        raise TypeError("by must be 'layer', 'leaf', a sequence of regexes or a mapping of "
                        f"selectors; got {type(by).__name__}")
    if not blocks:
        raise ValueError("by names no block")
    for select in blocks.values():
        select_leaves(params, select)  # a bad or empty selector fails here, by name
    return blocks


def _masked_mv(mask: jax.Array, op: Any, v: jax.Array) -> jax.Array:
    return mask * op.mv(mask * v)


def _masked_run(op: Any, sub: Any, key: jax.Array, steps: int, slq_kwargs: dict,
                meta: dict) -> Spectrum:
    """SLQ of the block ``sub`` of ``op`` by masked full products, from the probe the
    restricted run would draw, scattered into the block's coordinates."""
    if op.block is not None:
        raise ValueError("masked=True needs an unrestricted operator")
    kw = dict(slq_kwargs)
    if kw.pop("num_vectors", 1) != 1 or "v0" in kw:
        raise ValueError("masked=True draws one probe per block: no num_vectors or v0")
    dtype, distribution = kw.pop("dtype"), kw.pop("distribution", "normal")
    probe = random_probe(jax.random.split(key, 1)[0], sub.size, dtype=dtype,
                         distribution=distribution)
    full = lambda block: op.ravel(jax.tree.map(  # noqa: E731
        lambda p, b: jnp.zeros(p.shape, dtype) if b is None else b.astype(dtype), op.params,
        block, is_leaf=lambda x: x is None))
    mask = full(sub.unravel(jnp.ones(sub.size, dtype)))
    # Arrays in a tree_util.Partial are arguments of the compiled products: every block of a
    # model reuses one program.
    mv = jax.tree_util.Partial(_masked_mv, mask, op)
    return slq(mv, key, op.size, steps, v0=full(sub.unravel(probe)), dtype=dtype, meta=meta,
               **kw)


def block_spectra(op: Any, blocks: Any, key: jax.Array, num_steps: int, /, *,
                  masked: bool = False, **slq_kwargs: Any) -> dict[str, Spectrum]:
    """The SLQ spectrum of each diagonal block ``A[S, S]`` of ``op``, one run per block.

    Each block's probe is drawn from ``key`` itself, so a block's spectrum does not depend on
    which other blocks are listed. Each run takes ``min(num_steps, block size)`` steps, in the
    operator's dtype unless ``dtype`` is given; ``meta`` records the block's name and size.

    By default each block's products are those of the restricted operator (:func:`restrict`):
    they differentiate the block's parameters only, but each block compiles its own program.
    ``masked=True`` computes ``M A M v`` instead, ``M`` the block's 0/1 mask, with the Lanczos
    vectors living in the full space and starting from the restricted run's probe scattered
    into the block: the same Krylov space, hence the same spectrum up to rounding, from one
    compiled product for all blocks, each product costing a full one. Worth it when
    compilation dominates (many blocks, small data, a CPU).

    Args:
      op: a :class:`jaxspec.CurvatureOperator` (restricted or not).
      blocks: ``{name: selector}`` (e.g. from :func:`param_blocks`), or anything
        :func:`param_blocks` takes as ``by`` (``"layer"``, a list of regexes, ...).
      key: PRNG key of the probes.
      num_steps: Lanczos steps per block.
      masked: masked full products instead of restricted ones (one probe per block).
      **slq_kwargs: as in :func:`jaxspec.slq` (``num_vectors``, ``driver``, ``meta``, ...).

    Returns:
      ``{name: Spectrum}``, in the order of ``blocks``.

    Example:
      >>> import jax, jax.numpy as jnp, jaxspec
      >>> from jaxspec.blocks import block_spectra
      >>> loss = lambda p, x: jnp.mean(x) * (jnp.sum(p["a"] ** 2) + 3 * jnp.sum(p["b"] ** 2))
      >>> op = jaxspec.curvature_operator(loss, {"a": jnp.ones(3), "b": jnp.ones(2)},
      ...                                 jaxspec.batch_dataset(jnp.ones(4), 2))
      >>> spectra = block_spectra(op, "leaf", jax.random.key(0), 5)
      >>> {name: round(s.lambda_max, 4) for name, s in spectra.items()}
      {'a': 2.0, 'b': 6.0}
    """
    if not isinstance(blocks, Mapping):
        blocks = param_blocks(op.params, by=blocks)
    slq_kwargs.setdefault("dtype", op.dtype)
    meta = dict(slq_kwargs.pop("meta", None) or {})
    out = {}
    for name, select in blocks.items():
        sub = op.restrict(select)
        steps = min(int(num_steps), sub.size)
        info = {**meta, "block": name, "block_size": sub.size}
        if masked:
            out[name] = _masked_run(op, sub, key, steps, slq_kwargs, info)
        else:
            out[name] = slq(sub, key, sub.size, steps, meta=info, **slq_kwargs)
    return out

