"""The `sbs` subcommands, one module each (argument parsing and printing; the work is in the library)."""
