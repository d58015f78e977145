"""``python -m experiments.true_hessian``: runs :func:`experiments.true_hessian.main.main`."""

import sys

from experiments.true_hessian.main import main

if __name__ == "__main__":
    from jaxspec.compiler import cache_compilations

    cache_compilations()  # a later run loads the compiled programs from disk
    sys.exit(main())
