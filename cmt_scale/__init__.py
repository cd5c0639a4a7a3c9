"""The ``cmt-scale`` command line: thin wrappers over the packages (parse, call, print)."""
