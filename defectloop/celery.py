"""The module ``celery -A defectloop.celery`` points at: the app built from the environment's settings.

``defectloop worker`` and ``defectloop beat`` do the same in-process; this is for Celery's own tools
(``celery -A defectloop.celery inspect ...``, ``celery ... purge``). Building the app connects to nothing.
"""

from __future__ import annotations

from defectloop.app import create_celery_app
from defectloop.settings import load_settings

app = create_celery_app(load_settings())
