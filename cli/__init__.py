"""xrecon's command-line layer (installed as ``xrecon.cli``). Thin Typer commands:
parse, build a config, call one API function, print. No maths here."""
