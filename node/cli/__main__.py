"""`python -m node.cli`: the same as `pouw`."""

from node.cli.main import main

main()
