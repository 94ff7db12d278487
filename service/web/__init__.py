"""Browsers as clients: the page at `/` (page.py and its static/ files) and CORS for other origins (cors.py)."""
