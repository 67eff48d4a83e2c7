"""Secrets stay out of node.yaml, and ``ainode config show`` prints none."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from node.cli import main
from node.config_cli import MASK, masked


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_config_show_prints_where_secrets_are_never_what_they_are(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "pacs.token"
    token.write_text("s3cr3t-bearer-token\n")
    pseudonym_key = tmp_path / "pseudonym.key"
    pseudonym_key.write_bytes(b"k" * 32)
    path = _write(
        tmp_path,
        {
            "storage": {"data_dir": str(tmp_path / "data")},
            "destinations": {
                "pacs": {
                    "kind": "stowrs",
                    "url": "https://pacs/dicom-web",
                    "token_file": str(token),
                },
                "vna": {"kind": "stowrs", "url": "https://vna/dicom-web", "token_env": "VNA_TOKEN"},
            },
            "pseudonymisation": {"secret_file": str(pseudonym_key)},
            "audit": {"collector": {"host": "atna.hospital", "ca_file": "tls/ca.pem"}},
        },
    )
    assert main(["config", "show", "--config", str(path)]) == 0
    shown = capsys.readouterr().out
    assert "s3cr3t-bearer-token" not in shown and "kkkk" not in shown
    assert str(token) in shown and "VNA_TOKEN" in shown  # where, not what
    shown_yaml = yaml.safe_load(shown)
    assert shown_yaml["destinations"]["pacs"]["url"] == "https://pacs/dicom-web"
    # relative paths are the node.yaml folder's, as everywhere in the file
    assert shown_yaml["audit"]["collector"]["ca_file"] == str(tmp_path / "tls" / "ca.pem")


def test_inline_secrets_are_refused_with_where_to_put_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inline = {
        "destinations": {"pacs": {"kind": "stowrs", "url": "https://pacs/x", "token": "abc"}},
    }
    assert main(["config", "show", "--config", str(_write(tmp_path, inline))]) == 2
    assert "token_file" in capsys.readouterr().err


def test_the_mask_covers_secret_keys_at_any_depth_and_leaves_references() -> None:
    value = {
        "collector": {"password": "p", "key_password_file": "/etc/k", "token_env": "T"},
        "list": [{"api_key": "a", "secret": None}],
    }
    assert masked(value) == {
        "collector": {"password": MASK, "key_password_file": "/etc/k", "token_env": "T"},
        "list": [{"api_key": MASK, "secret": None}],
    }
