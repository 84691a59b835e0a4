"""A plugin that does nothing in three phases: measures the cost of the plugin chain itself."""

from edge.plugins import Plugin


class NoopE(Plugin):
    name = "noop_e"
    priority = 10

    def on_request(self, ctx):
        return None

    def on_response(self, ctx, response):
        return None

    def on_log(self, ctx):
        return None
