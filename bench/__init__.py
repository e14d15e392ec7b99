"""callmfa's benchmark: real SIP load through the whole chain, against Asterisk's own floor.

Run it with ``make bench`` (or ``python -m bench --help``); docs/benchmarks.md has the method.
"""
