"""``python -m alutwin``: the ``alutwin`` command."""

import sys

from alutwin.cli import main

if __name__ == "__main__":
    sys.exit(main())
