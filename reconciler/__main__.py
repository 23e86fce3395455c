"""Entry point for ``python -m reconciler`` (pure: hands over to ``cli``)."""

from reconciler.cli import main

raise SystemExit(main())
