"""The performance benchmarks behind `python -m search bench`, one module per benchmark, each a ratio
measured side by side in one run (see search.bench.run). The CLI's leaf: they use boneage_core and the
layers of search below them as a user would, and nothing imports them but the CLI."""

# A PostgreSQL server on which the storage benchmark (and the test suite) may make a scratch database
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
