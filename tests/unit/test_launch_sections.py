"""edge.launch.keep_instance_sections: what a test's rewritten config keeps of the running instance."""

from pathlib import Path

from edge.launch import keep_instance_sections

CURRENT = {
    "server": {"bind": ["127.0.0.1:4000"], "workers": 2, "loglevel": "info"},
    "store": {"backend": "local", "path": "/tmp/inst/store"},
    "routes": [{"match": {"path": "/"}, "upstream": "a"}],
}


def test_server_and_store_kept_when_absent():
    out = keep_instance_sections(CURRENT, {"routes": []}, Path("/tmp/inst"))
    assert out == {"routes": [], "server": CURRENT["server"], "store": CURRENT["store"]}


def test_server_keys_given_win_except_bind():
    out = keep_instance_sections(CURRENT, {"server": {"bind": ["0.0.0.0:80"], "workers": 1, "accesslog": "-"}},
                                 Path("/tmp/inst"))
    assert out["server"] == {"bind": ["127.0.0.1:4000"], "workers": 1, "loglevel": "info", "accesslog": "-"}


def test_a_given_store_replaces_the_instance_one():
    out = keep_instance_sections(CURRENT, {"store": {"backend": "redis", "url": "redis://127.0.0.1:1"}}, Path("/x"))
    assert out["store"] == {"backend": "redis", "url": "redis://127.0.0.1:1"}
    local = keep_instance_sections(CURRENT, {"store": {"backend": "local"}}, Path("/x"))
    assert local["store"] == {"backend": "local", "path": "/x/store"}   # never the shared default directory


def test_inputs_are_not_modified():
    new = {"server": {"workers": 3}}
    keep_instance_sections(CURRENT, new, Path("/x"))
    assert new == {"server": {"workers": 3}} and CURRENT["server"]["workers"] == 2
