"""Kits the tests share: chains mined in milliseconds (chainkit), jobs and claims
(claimkit), scripted wire peers (p2p_testkit, nodekit), real node processes and doc
shells (framework), the CLI in-process (clikit), fuzz seed records (corpus) and the
plain NumPy oracle of the mining kernels (reference). Shared fixtures: tests/conftest.py."""
