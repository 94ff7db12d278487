"""Who may call: opt-in API keys from a file that is re-read when it changes, and per-caller limits.

    keys.py    the keys file: NAME KEY lines, hashed, compared in constant time, watched for changes
    limits.py  a token bucket per key name (or per client address without keys)
    access.py  the ASGI guard that refuses from the headers (401, 429) before any route runs
"""
