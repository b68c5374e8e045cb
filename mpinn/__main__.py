"""`python -m mpinn`: the `mpinn` command."""

from .cli import cli

cli(prog_name="mpinn")
