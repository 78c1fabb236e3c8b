"""gunicorn settings of the naive app (`bench/naive_app.py`): the service's
`gunicorn.conf.py`, less what the simplest app would not have. Its logging configuration
is dropped, so gunicorn logs as it does by default: errors to stderr, no access log; and
its worker class is gunicorn's own gevent worker (the service's subclass only changes the
pages of requests gunicorn refuses itself). Workers, connections, keep-alive, timeouts and
the rest are the service's.

    gunicorn -c bench/naive_gunicorn.conf.py bench.naive_app:app
"""

import runpy
from pathlib import Path

_service_settings = runpy.run_path(str(Path(__file__).resolve().parent.parent / "gunicorn.conf.py"))
globals().update({name: value for name, value in _service_settings.items() if not name.startswith("_")})

logconfig_dict = {}
worker_class = "gevent"
