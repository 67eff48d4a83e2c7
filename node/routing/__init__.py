"""The routing stage: the node's side of ``routers``.

``routers`` decides (routes.yaml against a study view); this package runs it inside the node:
``stage`` (``RoutingStage``: polls stable study versions, reloads routes.yaml on SIGHUP or
change, audited), ``matches`` (writes ``route_matches`` and marks the version routed),
``catalog`` (what node.yaml tells a check: installed plugins, shadow destinations) and ``cli``
(``ainode routes check|explain``).
"""
