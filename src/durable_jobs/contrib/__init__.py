"""Integrations with web frameworks, each an optional extra.

``durable_jobs.contrib.fastapi`` (``pip install 'simple-durable-jobs[fastapi]'``) and
``durable_jobs.contrib.django`` (``[django]``). Importing ``durable_jobs`` imports
neither; each imports its framework only when it is itself imported.
"""
