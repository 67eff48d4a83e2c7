"""Acceptance 4: reloading routes while the node runs.

A valid change applies to studies that become stable afterwards; an invalid one is rejected
and logged while routing goes on with the old routes. Also: SIGHUP reloads, and the node
refuses to start on an invalid file.
"""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from routing_support import add_series, make_stable

from node.config import NodeConfig, StabilityConfig, StorageConfig
from node.db import connect
from node.destination_settings import FolderDestination
from node.routing.stage import RoutingStage
from routers.check import RoutesFileError

PLUGINS = {"plugin-a": ("1",), "plugin-b": ("1",)}


def routes_text(plugin: str) -> str:
    return (
        "routes:\n"
        "  - name: chest\n"
        "    when: {modality: CT, body_part: chest}\n"
        f"    run: [{plugin}]\n"
        "    send_to: [pacs]\n"
    )


def write_atomically(path: Path, text: str) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


@pytest.fixture
def config(tmp_path: Path) -> NodeConfig:
    routes = tmp_path / "routes.yaml"
    write_atomically(routes, routes_text("plugin-a"))
    return NodeConfig(
        storage=StorageConfig(data_dir=tmp_path / "data"),
        stability=StabilityConfig(poll_interval_s=0.05),
        routes_file=routes,
        destinations={"pacs": FolderDestination(path=tmp_path / "out")},
    )


@pytest.fixture
def conn(config: NodeConfig) -> Iterator[sqlite3.Connection]:
    connection = connect(config.storage.database_path)
    yield connection
    connection.close()


def stable_chest_study(conn: sqlite3.Connection, uid: str) -> int:
    add_series(conn, 3, study=uid, series=f"{uid}.1")
    return make_stable(conn, uid)


def plugins_for(conn: sqlite3.Connection, version_id: int) -> list[str] | None:
    """The plugins routed for a version, or None while it is not routed yet."""
    routed = conn.execute(
        "SELECT routed_at FROM study_versions WHERE id = ?", (version_id,)
    ).fetchone()[0]
    if routed is None:
        return None
    return [
        r[0]
        for r in conn.execute(
            "SELECT plugin FROM route_matches WHERE study_version_id = ?", (version_id,)
        )
    ]


def test_valid_change_applies_invalid_change_is_rejected(config, conn, caplog) -> None:
    stage = RoutingStage(config, watch_interval_s=0.05, plugin_catalog=lambda c: PLUGINS)
    stage.start()
    try:
        first = stable_chest_study(conn, "1.2.1")
        assert wait_until(lambda: plugins_for(conn, first), what="first study routed") == [
            "plugin-a"
        ]

        with caplog.at_level(logging.ERROR, logger="routers.reload"):
            write_atomically(
                config.routes_file, routes_text("plugin-b").replace("modality:", "Modalty:")
            )
            wait_until(lambda: stage.routes.last_error is not None, what="rejection")
        assert stage.routes.generation == 1
        assert "unknown keyword 'Modalty'" in caplog.text
        assert "keeping the 1 route(s) in force" in caplog.text

        second = stable_chest_study(conn, "1.2.2")
        assert wait_until(lambda: plugins_for(conn, second), what="routed on old routes") == [
            "plugin-a"
        ]

        write_atomically(config.routes_file, routes_text("plugin-b"))
        wait_until(lambda: stage.routes.generation == 2, what="valid reload")
        assert stage.routes.last_error is None
        third = stable_chest_study(conn, "1.2.3")
        assert wait_until(lambda: plugins_for(conn, third), what="routed on new routes") == [
            "plugin-b"
        ]
        assert plugins_for(conn, first) == ["plugin-a"]  # earlier matches are not rewritten
    finally:
        stage.stop()


def test_sighup_reloads(config, conn) -> None:
    stage = RoutingStage(config, watch_interval_s=None, plugin_catalog=lambda c: PLUGINS)
    previous = signal.getsignal(signal.SIGHUP)
    stage.start()
    try:
        write_atomically(config.routes_file, routes_text("plugin-b"))
        os.kill(os.getpid(), signal.SIGHUP)
        wait_until(lambda: stage.routes.generation == 2, what="reload on SIGHUP")
        version = stable_chest_study(conn, "1.2.9")
        assert wait_until(lambda: plugins_for(conn, version)) == ["plugin-b"]
    finally:
        stage.stop()
    assert signal.getsignal(signal.SIGHUP) == previous


def test_node_refuses_to_start_on_an_invalid_routes_file(config) -> None:
    write_atomically(config.routes_file, routes_text("plugin-c"))
    with pytest.raises(RoutesFileError) as raised:
        RoutingStage(config, plugin_catalog=lambda c: PLUGINS)
    assert "routes.yaml:4:11: error: unknown plugin 'plugin-c'" in str(raised.value)


def test_serve_stages_refuse_an_invalid_routes_file(config) -> None:
    """``ainode serve`` builds its stages from node.yaml; a broken routes.yaml stops it."""
    from node.service import build_stages

    write_atomically(config.routes_file, routes_text("plugin-a").replace("modality", "Modalty"))
    with pytest.raises(RoutesFileError, match="unknown keyword 'Modalty'"):
        build_stages(config)
