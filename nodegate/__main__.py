import sys

from nodegate.cli import main

sys.exit(main())
