"""How jaxspec compiles: the XLA options of the programs that run a model, :func:`jit`, which
adds them, :func:`jit_argument` (an operator as an argument of a program, not a constant), and
:func:`cache_compilations` (compiled programs kept on disk for later processes).

XLA:CPU (jaxlib 0.10) hands dots, reductions and convolutions to the YNNPACK library by default
(``--xla_cpu_experimental_ynn_fusion_type``). Its convolutions run on one thread at some shapes,
and the gradient with respect to a convolution's kernel, which XLA then builds around them, is
several times slower than XLA's own (Eigen) convolution (docs/speed.md has the
figures; ``python -m experiments.cpu_flags`` measures both settings on your machine).
:data:`CPU_OPTIONS` keeps YNNPACK's dots and reductions and takes the convolutions back; models
without convolutions compile to the same program either way.

The options belong to the outermost ``jax.jit`` of a program (JAX refuses them on a nested
one), so jaxspec compiles every program that may evaluate a model (the operator's products and
linearisations, the compiled Lanczos driver, the estimators, the training steps) with
:func:`jit`. Use :func:`jit` for your own programs for the same effect (pass
:func:`compiler_options` to ``jax.jit`` for the options alone). They
are not used where ``XLA_FLAGS`` sets the YNNPACK fusions itself, where the default backend is
not the CPU, or where this jaxlib does not know them.

On a CPU :func:`jit` also puts the convolutions inside the program's loops in the order XLA:CPU's
fast kernels take (XLA does so only outside loops), so a CNN's products run as fast in
``lax.scan`` or the compiled Lanczos driver as in the host loop, and computes convolutions whose
window is larger than their input (VGG's last layers) as matrix products
(:func:`jaxspec.convolutions.fast_convolutions`).
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import jax
import numpy as np

from jaxspec.convolutions import enclosing_rewrite, fast_convolutions

__all__ = ["CPU_OPTIONS", "cache_compilations", "compiler_options", "jit", "jit_argument"]

_FLAG = "xla_cpu_experimental_ynn_fusion_type"

CPU_OPTIONS = {_FLAG: "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def compiler_options() -> dict:
    """The compiler options of jaxspec's programs on this machine: :data:`CPU_OPTIONS` on a CPU
    backend whose jaxlib accepts them, unless ``XLA_FLAGS`` sets the YNNPACK fusions; else
    ``{}``. Decided once per process, with one tiny compilation.

    Example:
      >>> import jax
      >>> from jaxspec.compiler import compiler_options
      >>> jax.jit(lambda x: 2 * x, compiler_options=compiler_options())(1.0).item()
      2.0
    """
    if _FLAG in os.environ.get("XLA_FLAGS", "") or jax.default_backend() != "cpu":
        return {}
    try:
        jax.jit(lambda x: x, compiler_options=CPU_OPTIONS).lower(np.float32(0)).compile()
    except RuntimeError:  # "No such compile option" or not a valid enum value in this jaxlib
        return {}
    return dict(CPU_OPTIONS)


class _Jit:
    """``jax.jit(fun, **kwargs)`` with :func:`compiler_options` and, on a CPU,
    :func:`jaxspec.convolutions.fast_convolutions`, made at the first call (both need the
    backend, which must not start at import). Called with traced arguments, inside another
    program, it takes no options (JAX takes them only from the outermost jit) and rewrites its
    convolutions unless an enclosing :func:`fast_convolutions` does: the outer program may be
    the user's own ``jax.jit`` (around ``op.mv``, a matfree or lineax solver), which would leave
    the ones in its loops to XLA."""

    def __init__(self, fun: Callable, kwargs: dict):
        functools.update_wrapper(self, fun)
        self._kwargs = kwargs
        self._plain = jax.jit(fun, **kwargs)
        self._top = self._nested = None

    def _get(self, args, kwargs):
        if self._top is None:
            if jax.default_backend() == "cpu":
                # the plain jit traced inside: its trace is cached and shared by both
                rewritten, options = fast_convolutions(self._plain), compiler_options()
                self._nested = jax.jit(rewritten, **self._kwargs)
                self._top = jax.jit(rewritten, **self._kwargs,
                                    **({"compiler_options": options} if options else {}))
            else:  # compiler_options() is empty off a CPU
                self._top = self._nested = self._plain
        if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((args, kwargs))):
            return self._plain if enclosing_rewrite() else self._nested
        return self._top

    def __call__(self, *args, **kwargs):
        return self._get(args, kwargs)(*args, **kwargs)

    def lower(self, *args, **kwargs):
        return self._get(args, kwargs).lower(*args, **kwargs)


def jit(fun: Callable, /, **kwargs) -> Callable:
    """``jax.jit(fun, **kwargs)`` compiled with :func:`compiler_options` (and on a CPU with
    :func:`jaxspec.convolutions.fast_convolutions`); for a decorator with arguments,
    ``functools.partial(jit, donate_argnums=...)``.

    Example:
      >>> import jax.numpy as jnp
      >>> from jaxspec.compiler import jit
      >>> jit(lambda x, n: x ** n, static_argnums=1)(jnp.float32(3.0), 2).item()
      9.0
    """
    return _Jit(fun, kwargs)


def jit_argument(matvec: Callable) -> Callable:
    """``matvec`` as an argument of a jitted function: a pytree operator as it is (a
    :class:`jaxspec.CurvatureOperator`, a ``jax.tree_util.Partial`` of arrays: its arrays go in
    as arguments, not as constants of the program), any other callable wrapped in a leafless
    ``jax.tree_util.Partial`` (static, hashed by identity: pass the same function to reuse a
    compilation).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> from jaxspec import jit_argument
      >>> mv = jit_argument(lambda v: 2 * v)
      >>> jax.tree.leaves(mv), jax.jit(lambda op, v: op(v))(mv, jnp.ones(2)).tolist()
      ([], [2.0, 2.0])
    """
    leaves = jax.tree.leaves(matvec)
    if leaves and all(isinstance(x, (jax.Array, np.ndarray, np.generic)) for x in leaves):
        return matvec
    return jax.tree_util.Partial(matvec)


def cache_compilations(directory: str | os.PathLike | None = None) -> str:
    """Keeps the programs this process compiles on disk (JAX's persistent compilation cache), so
    that a later process running the same programs on the same machine and JAX loads them
    instead of compiling them again. jaxspec's command-line scripts call it first; call it
    before your first computation to do the same.

    ``directory`` defaults to the one JAX was given (``JAX_COMPILATION_CACHE_DIR``), else
    ``$XDG_CACHE_HOME/jaxspec/xla`` (``~/.cache/jaxspec/xla``). JAX keeps only programs that took
    a second or more to compile unless told otherwise, and most of jaxspec's take less, so the
    threshold goes to 0 unless ``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` sets it. The cache
    is keyed by the program, JAX's version, the device and the compiler's options, so a changed
    one compiles afresh; it is never trimmed (delete the directory to reclaim the space), and
    ``JAX_ENABLE_COMPILATION_CACHE=false`` turns it off. JAX opens the cache at the first
    compilation after a directory is set, and keeps that one for the process. Returns the
    directory.

    Example:
      >>> import jax, tempfile
      >>> from jaxspec.compiler import cache_compilations
      >>> before = (jax.config.jax_compilation_cache_dir,
      ...           jax.config.jax_persistent_cache_min_compile_time_secs)
      >>> path = tempfile.mkdtemp()
      >>> cache_compilations(path) == path == jax.config.jax_compilation_cache_dir
      True
      >>> jax.config.update("jax_compilation_cache_dir", before[0])  # as it was: a doctest
      >>> jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    """
    if directory is None:
        directory = jax.config.jax_compilation_cache_dir or os.path.join(
            os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "jaxspec", "xla")
    directory = os.fspath(directory)
    jax.config.update("jax_compilation_cache_dir", directory)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return directory
