"""The pure policy core: typed pages, classification, representations, assembly.

Nothing in this package performs I/O, awaits, reads the clock or the environment.
Callers pass in everything (token counter, tenant policy, turn number) and get values back.
"""
