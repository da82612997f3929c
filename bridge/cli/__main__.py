"""``python -m layerswarm.bridge.cli``: the ``layerswarm`` command without a PATH lookup."""
import sys

from layerswarm.bridge.cli.main import main

sys.exit(main())
