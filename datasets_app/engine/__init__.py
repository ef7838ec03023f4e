"""The dataset engine: parsing, validation, statistics, PII and curation. No Django inside.

It works on files and iterators of normalized rows (see ``rows``), so the Celery tasks, the tests and
the benchmarks drive the same code.
"""
