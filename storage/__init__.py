"""Storage: migrations, the idempotent readings sink, the writer stage and queries. All SQL lives here."""
