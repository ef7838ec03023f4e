"""The training engine: runs outside Django, from a plain run config, and reports through a small interface.

It holds the studio's own starter model (``starter``, trained on the bundled ``corpus``) and the trainer
that fine-tunes a base model. Nothing here imports Django, so the Celery task, the tests and the
benchmarks drive the same code, and a trainer subprocess starts without loading the web application.
"""
