"""The pure core: time, windows, plans, sketches, summaries, line protocol, personal data.

No I/O library and nothing outside `federation.core` but `federation.errors`.
"""
