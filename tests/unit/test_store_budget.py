"""The default plugin time budget is derived from the store's (issue 8, part 2)."""

from edge.config import StoreConfig
from edge.plugins import PluginConfig
from edge.store.base import BUDGET_MARGIN_S, CALL_TIMEOUTS, DEFAULT_PLUGIN_TIMEOUT_S, plugin_budget_s


def test_default_plugin_budget_outlasts_a_store_call_at_the_default_store_timeout():
    store_timeout_s = StoreConfig().timeout
    assert PluginConfig().timeout == DEFAULT_PLUGIN_TIMEOUT_S == plugin_budget_s(store_timeout_s)
    # the longest a store call may wait, plus room for the plugin's own failure handling
    assert PluginConfig().timeout >= CALL_TIMEOUTS * store_timeout_s + BUDGET_MARGIN_S


def test_plugin_budget_for_several_calls_and_larger_store_timeouts():
    assert plugin_budget_s(0.05) == 0.25
    assert plugin_budget_s(0.05, calls=2) == 0.45
    assert plugin_budget_s(0.5) == 2.05
