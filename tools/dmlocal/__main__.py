import sys

from dmlocal.cli import main

sys.exit(main())
