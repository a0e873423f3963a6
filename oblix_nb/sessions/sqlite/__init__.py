"""The SQLite engine: store, migrations, search, stats (and shared SQL pieces in ``common``)."""
