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
