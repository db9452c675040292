"""The torture test: worker processes under SIGKILLs, freezes and database restarts.

See ``tests/torture/README.md``; ``python -m tests.torture --help`` for the command.
"""
