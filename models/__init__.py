"""Plugin API, runners, device management and the reference plugins."""
