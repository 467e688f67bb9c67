import sys

from emergent.platform.cli import main

sys.exit(main())
