"""Use cases: they orchestrate ports and hold no driver code."""
