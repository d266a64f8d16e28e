"""Parsing a study: its TOML file, --set overrides and the search space, into a StudySpec."""
