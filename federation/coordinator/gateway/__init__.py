"""The gateway: what central accepts, checked batch by batch."""
