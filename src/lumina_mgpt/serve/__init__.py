"""`lumina serve`: an OpenAI-compatible HTTP API with request batching (app.py, scheduler.py, parsing.py)
and a Gradio web UI at /ui (ui.py). Nothing is imported here: the CLI must stay light."""
