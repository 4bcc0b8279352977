"""The evolution: the driver loop, selection, mutation, search modes and progressive hurdles."""
