"""edge: a reverse proxy and edge server on gunicorn + gevent."""

__version__ = "0.1.0"
