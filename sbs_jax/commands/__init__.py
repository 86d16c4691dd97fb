"""The `sbs` subcommands, one module each: argument parsing, checks of the flags, printing.
The work is done by the library below (`sbs_jax.cli` lists them; none of the library parses
arguments)."""
