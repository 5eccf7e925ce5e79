"""Pure domain logic: label sets, heads, scoring, model loading and image preprocessing.

Nothing here imports Ray or FastAPI, and nothing runs at import time.
"""
