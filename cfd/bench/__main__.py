"""``python -m cfd.bench <benchmark> …``."""
from .cli import main

raise SystemExit(main())
