"""``python -m disco_score.bench``: see :func:`disco_score.bench.harness.main`."""

from .harness import main

raise SystemExit(main())
