"""The command line: `python -m core train|models|runs|audit|bakeoff|evaluate`, one parser, one error-to-exit mapping."""
