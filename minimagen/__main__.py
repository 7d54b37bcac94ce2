"""``python -m minimagen ...`` runs the ``minimagen`` command; ``torchrun ... -m minimagen train ...`` needs it."""

from minimagen.cli import main

raise SystemExit(main())
