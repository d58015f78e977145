"""``python -m experiments.true_hessian``: runs :func:`experiments.true_hessian.main.main`."""

import sys

from experiments.true_hessian.main import main

if __name__ == "__main__":
    sys.exit(main())
