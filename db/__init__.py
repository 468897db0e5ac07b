"""SQLAlchemy schema, sessions, repositories and Alembic migrations. No torch here."""
