"""`python -m mpinn`: the `mpinn` command."""

from .cli import main

main(prog_name="python -m mpinn")
