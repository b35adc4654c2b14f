"""``python -m daskh5`` runs the ``daskh5`` command line."""

from daskh5.cli import main

raise SystemExit(main())
