"""The README's library snippet runs as written (its elided loss filled in), and a second run of
it on new parameters compiles nothing: no retrace or recompilation per Lanczos step."""

import os
import re

import jax.numpy as jnp
import numpy as np

from compiles import compilations

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def _snippet() -> str:
    text = open(README).read()
    section = text[text.index("## The library in ten lines"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def _run(code: str, scope: dict, tmp_path) -> dict:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        exec(compile(code, "README.md", "exec"), scope)
    finally:
        os.chdir(cwd)
    return scope


def test_readme_library_snippet_runs_and_compiles_once(tmp_path):
    body = ('    h = jnp.tanh(batch["image"] @ params["w1"])\n'
            '    logits = h @ params["w2"]\n'
            '    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(logits.shape[0]), '
            'batch["label"]])\n')
    code = _snippet().replace("    ...\n", body).replace(", 100,", ", 12,")
    code = code.replace("slq_hooks(progress=True)", "slq_hooks(progress=False)")
    code = "import jax.numpy as jnp\n" + code
    rng = np.random.default_rng(1)

    def params():
        return {"w1": jnp.asarray(rng.normal(size=(12, 8)) * 0.3, jnp.float32),
                "w2": jnp.asarray(rng.normal(size=(8, 3)) * 0.3, jnp.float32)}

    data = np.random.default_rng(0)
    scope = _run(code, {"x": data.normal(size=(200, 12)).astype(np.float32),
                        "y": data.integers(0, 3, 200).astype(np.int32), "params": params()},
                 tmp_path)
    assert (tmp_path / "spectrum.json").exists() and (tmp_path / "spectrum.png").exists()
    spectrum = scope["spectrum"]
    assert spectrum.nodes.size == 12 and abs(spectrum.weights.sum() - 1) < 1e-9
    # The operator and the spectrum again, at other parameters of the same shapes (the same
    # loss_fn: a new function is a new program): every program is cached.
    again = code[code.index("H = jaxspec.curvature_operator"):]
    scope["params"] = params()
    with compilations() as seen:
        _run(again, scope, tmp_path)
    assert seen == []
    assert scope["spectrum"].lambda_max != spectrum.lambda_max


def test_readme_curvature_snippet_imports_the_modules_it_uses():
    """The "Curvature beyond the Hessian" snippet calls ``jaxspec.plotting.block_spectra_plot``;
    ``import jaxspec`` does not import the edge modules (jaxspec/__init__.py), so each one the
    snippet reaches as ``jaxspec.<module>.`` must be imported by the snippet itself, or running
    it as written raises AttributeError (it did for ``jaxspec.plotting``)."""
    import subprocess
    import sys

    text = open(README).read()
    section = text[text.index("## Curvature beyond the Hessian"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    used = sorted(set(re.findall(r"\bjaxspec\.([a-z_]+)\.", code)))
    imports = "\n".join(line for line in code.splitlines() if line.startswith(("import", "from")))
    probe = imports + "\nimport jaxspec\nprint(' '.join(m for m in %r if not hasattr(jaxspec, m)))" % (
        used,)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, check=True)
    assert out.stdout.split() == [], f"used but not imported by the snippet: {out.stdout}"
