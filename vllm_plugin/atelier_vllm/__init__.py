"""Atelier's plugin for vLLM (see ``cpu_lora``). Runs inside vLLM's virtualenv: imports nothing of the studio."""
