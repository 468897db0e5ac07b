"""``python -m defectloop.cli``: how ``defectloop up`` and the demo start their child processes."""

from defectloop.cli import main

main()
