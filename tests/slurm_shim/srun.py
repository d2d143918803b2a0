"""Fake ``srun`` for tests: drops its options and runs the command in place."""

import os
import sys

args = sys.argv[1:]
while args and args[0].startswith("-"):
    args.pop(0)
os.execvp(args[0], args)
