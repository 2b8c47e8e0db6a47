"""The HTTP API under /api/v1/ (django-ninja): per-user tokens, idempotent POSTs, problem+json errors.

Thin like the dashboard's views: every endpoint parses input, checks the dashboard's permission,
calls the same service or selector and serialises; the rules live in workflows/rules.py.
"""
