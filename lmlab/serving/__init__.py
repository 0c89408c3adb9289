"""``lmlab serve``: an OpenAI-compatible HTTP API with continuous batching, and a chat page.

``protocol`` checks the API's request bodies, ``app`` is the FastAPI application over the scheduler
(``lmlab.generation.scheduler``), ``server`` loads runs and runs the app under uvicorn, ``chat.html`` is the page.
"""
