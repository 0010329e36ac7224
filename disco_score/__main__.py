"""``python -m disco_score``: the ``disco-score`` command line (see :mod:`disco_score.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
