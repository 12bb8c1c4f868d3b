import sys

from localvm.cli import main

sys.exit(main())
