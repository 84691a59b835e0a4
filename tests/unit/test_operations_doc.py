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
