"""gunicorn settings for edge: `gunicorn -c gunicorn.conf.py`.

Everything comes from the edge configuration file named by $EDGE_CONFIG
(default conf/edge.yaml), validated here before any worker starts. gunicorn runs
this file again on `kill -HUP <master>`: a configuration or plugin that fails
validation is refused then and the running configuration is kept (edge/boot.py).
The settings include gunicorn hooks (on_starting, on_reload, post_fork) that send
edge's own log lines through gunicorn's error log, in the master and every worker.
"""

from edge.boot import gunicorn_settings, load_for_master

wsgi_app = "edge.h2:application"
globals().update(gunicorn_settings(load_for_master()))
