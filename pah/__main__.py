import sys

from pah.cli import main

sys.exit(main())
