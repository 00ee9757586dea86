"""`python -m jaxscale.scaling`: see jaxscale/scaling/cli.py."""

import sys

from jaxscale.scaling import cli

if __name__ == '__main__':
  sys.exit(cli.main())
