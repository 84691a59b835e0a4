#!/usr/bin/env python3
"""`make run`: two demo origins on 127.0.0.1:9001/9002 and edge on 127.0.0.1:8080 (conf/edge.yaml).

edge runs in the foreground with the plain `gunicorn -c gunicorn.conf.py` command; Ctrl-C
stops it, and the origins are stopped by PID on the way out.
"""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.launch import start_origin  # noqa: E402


def main() -> int:
    origins = [start_origin("a", 9001), start_origin("b", 9002)]
    print("demo origins on 127.0.0.1:9001 and 127.0.0.1:9002")
    print("edge on http://127.0.0.1:8080 (conf/edge.yaml). Try:")
    for line in (
        "curl -i http://127.0.0.1:8080/",
        "curl -i http://127.0.0.1:8080/healthz",
        "curl -i 'http://127.0.0.1:8080/old/page?x=1'",
        "curl -s http://127.0.0.1:8080/echo -d 'hello'",
        "curl -s http://127.0.0.1:8080/api/echo",
    ):
        print("   ", line)
    print("Ctrl-C stops everything.", flush=True)
    env = {**os.environ, "EDGE_CONFIG": os.environ.get("EDGE_CONFIG", str(REPO / "conf" / "edge.yaml"))}
    try:
        return subprocess.call([sys.executable, "-m", "gunicorn", "-c", str(REPO / "gunicorn.conf.py")], cwd=str(REPO), env=env)
    except KeyboardInterrupt:
        return 0
    finally:
        for o in origins:
            o.stop()


if __name__ == "__main__":
    sys.exit(main())
