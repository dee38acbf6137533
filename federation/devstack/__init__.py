"""A federation on one machine: local servers, the demo, synthetic traffic,
the central scan and the Kapacitor emulator.
"""
