"""The operator's console: REST API and web pages served by `ainode serve`."""
