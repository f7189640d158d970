"""`python -m genrec` is the `genrec` command (for processes started without the console script)."""

from genrec.cli import main

main()
