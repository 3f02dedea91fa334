"""The `toolkit` command line: thin typer commands over the stage functions."""
