"""``python -m disco_score.bench``: see :func:`disco_score.bench.cli.main`."""

from .cli import main

raise SystemExit(main())
