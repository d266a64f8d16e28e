"""The command line: argument parsing, one-line errors and exit codes, and the commands themselves."""
