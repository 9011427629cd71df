"""Built-in handler plugins. Each imports only ``server.plugin_api`` and registers through the
``switchboard.plugins`` entry-point group like any third-party plugin."""
