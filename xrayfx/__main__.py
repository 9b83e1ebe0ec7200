"""`python -m xrayfx` runs the command line."""

from xrayfx.cli import main

main()
