"""Tests of the SDK and the CLI (package ``runrelay``).

TODO (end to end, once ``api.app.create_app(runtime)`` exists): run a real
uvicorn on 127.0.0.1 and check, through ``tests/support/proxy.py``:
- a cut-connection proxy that drops the stream mid-run: ``events.stream`` yields
  every event exactly once, in order, and ends after the terminal event;
- a stalled connection (proxy stops forwarding, no heartbeats): the client
  resumes after ``stale_after`` and misses nothing;
- ``since_id`` across an API restart, a 204 at the end, 404/401/400 raised typed;
- ``runrelay run story --follow`` prints the whole story to stdout.
"""
