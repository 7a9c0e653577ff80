"""What the tests share: peers to talk to, clients to talk with, and ways to start Postern.

Fixtures live in the conftest.py files; the code behind them lives here, so that no test
module imports from another test module or from a conftest. Nothing in this package imports
pytest at module level unless it needs to; the modules the benchmarks use (processes,
crashloop, sink, hostile, dnsserver) never do.
"""
