"""`python -m compiler.models`: the disco-generate command (cli.py)."""
import sys

from .cli import main

sys.exit(main())
