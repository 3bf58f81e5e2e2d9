"""Developer tooling: the local testnet launcher and network namespaces."""
