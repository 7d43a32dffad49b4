"""`python -m copyloop …` is the `copyloop` command."""

from copyloop.cli import main

main()
