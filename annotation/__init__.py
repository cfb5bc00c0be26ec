"""The Label Studio bridge: projects, rounds (route / push / pull) and agreement. Filled by a later issue."""
