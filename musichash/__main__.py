"""``python -m musichash``: the command line."""

from musichash.cli import cli

cli(prog_name="musichash")
