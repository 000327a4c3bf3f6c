"""``python -m simulations.link``: the link emulator's CLI without the ``tandem`` wrapper."""

from simulations.link.cli import main

raise SystemExit(main())
