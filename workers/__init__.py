"""Celery app, tasks, services, camera ingestion and beat schedule."""
