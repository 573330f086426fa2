import sys

from devstack.stack import main

raise SystemExit(main(sys.argv[1:]))
