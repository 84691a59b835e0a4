"""docs/operations.md keeps up with the code it describes: signals, metric names, failure causes."""

from pathlib import Path

import pytest
from gunicorn.arbiter import Arbiter

import edge.errors as errors
import plugins.ratelimit as ratelimit

DOC = (Path(__file__).resolve().parents[2] / "docs" / "operations.md").read_text()


@pytest.mark.parametrize("signame", sorted(Arbiter.SIG_NAMES[s].upper() for s in Arbiter.SIGNALS))
def test_every_signal_gunicorn_handles_is_documented(signame):
    rows = [ln for ln in DOC.splitlines() if ln.startswith("| `")]
    assert any(f"`{signame}`" in ln.split("|")[1] for ln in rows), f"no row of the signal table for {signame}"


@pytest.mark.parametrize("cls", [c for c in vars(errors).values()
                                 if isinstance(c, type) and issubclass(c, errors.UpstreamError) and c is not errors.UpstreamError],
                         ids=lambda c: c.__name__)
def test_every_upstream_failure_cause_is_listed_with_the_metrics(cls):
    assert f"`{cls.metric}`" in DOC


@pytest.mark.parametrize("name", [v for k, v in vars(ratelimit).items() if k.startswith("M_")])
def test_every_ratelimit_metric_is_listed(name):
    assert name.rstrip(".") in DOC


def _metrics_docstring_names() -> list[str]:
    import re

    import edge.metrics as metrics
    return re.findall(r"^  ``([a-z_.<>]+)``", metrics.__doc__, re.M)


@pytest.mark.parametrize("name", _metrics_docstring_names())
def test_every_metric_named_in_edge_metrics_is_listed(name):
    assert f"`{name}`" in DOC


@pytest.mark.parametrize("cls", [errors.InvalidResponseField, errors.UnsendableRequest, errors.ClientDisconnected],
                         ids=lambda c: c.__name__)
def test_errors_counted_under_their_own_name_are_listed(cls):
    # the front ends and Proxy.handle count these by ``cls.metric`` alone (edge/h1.py, edge/h2.py, edge/app.py)
    assert f"`{cls.metric}`" in DOC
