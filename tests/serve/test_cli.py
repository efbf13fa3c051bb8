"""`panoptic-train serve` refuses bad options with one error line before loading any model."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from panoptic_train.cli import main


def test_a_port_in_use_is_reported_before_the_model_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing_model = tmp_path / "not_loaded.pt"  # loading it would fail differently
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main(["serve", str(missing_model), "--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert f"error: Cannot listen on 127.0.0.1:{port}" in error
    assert "Pick another --port" in error and "Loading" not in error


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--port", "70000"], "--port 70000 is not a port number"),
        (
            ["--max-batch", "0"],
            "serve options:\n  max_batch=0: should be greater than or equal to 1",
        ),
        (["--max-wait-ms", "-5"], "max_wait_ms=-5.0: should be greater than or equal to 0"),
        (["--timeout", "0"], "timeout_s=0.0: should be greater than 0"),
    ],
)
def test_bad_options_name_the_value(
    option: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "model.pt", *option]) == 2
    assert message in capsys.readouterr().err
