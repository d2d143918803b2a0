import os
import sys

# Shared helpers live in tests/averaging/_merge_helpers.py.
sys.path.insert(0, os.path.dirname(__file__))
