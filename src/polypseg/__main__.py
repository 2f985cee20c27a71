"""`python -m polypseg` is the `polypseg` command (for machines where only the interpreter is on PATH)."""

from .cli import main

raise SystemExit(main())
