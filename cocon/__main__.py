"""`python -m cocon <command>`: the same as the installed `cocon` command (cocon.cli)."""

import sys

from cocon.cli import main

sys.exit(main())
