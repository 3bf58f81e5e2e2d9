"""The `pouw` command line, one module per command group."""
