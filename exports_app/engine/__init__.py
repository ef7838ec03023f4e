"""The export engine: merge a model version into plain safetensors, write GGUF files, write Ollama Modelfiles.

No Django here (``lint-imports`` checks it): the Celery task runs ``python -m exports_app.engine <plan.json>`` as a
subprocess, because the worker never imports torch, and reads its progress from the lines it prints.
"""
