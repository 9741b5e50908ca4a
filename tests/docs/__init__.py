"""The documentation's code blocks, run as tests (see ``markdown.py`` for the rules)."""
