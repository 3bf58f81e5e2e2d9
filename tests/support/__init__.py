"""Kits the tests share: chains mined in milliseconds, scripted wire peers, real node
processes, fuzz seed records and the plain NumPy oracle of the mining kernels."""
