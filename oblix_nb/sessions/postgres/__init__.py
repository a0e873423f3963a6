"""The PostgreSQL engine (psycopg 3, imported only when a store is opened): store, migrations, search,
stats and the NUL text codec."""
