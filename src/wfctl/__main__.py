"""`python -m wfctl` runs the command line."""

from wfctl.cli import main

main()
