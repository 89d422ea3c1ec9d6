"""The app command line: variables substituted, split like a shell, never run through one."""

from __future__ import annotations

from vigil.supervisor.process import render_command


def test_variables_are_substituted_before_splitting() -> None:
    env = {"VIGIL_ADDRESS": "10.213.0.101", "VIGIL_GROUP": "web1"}
    assert render_command("python3 -m http.server --bind ${VIGIL_ADDRESS} 8080", env) == [
        "python3",
        "-m",
        "http.server",
        "--bind",
        "10.213.0.101",
        "8080",
    ]


def test_no_shell_injection_through_values() -> None:
    env = {"VIGIL_GROUP": "x; rm -rf /"}
    assert render_command("echo '${VIGIL_GROUP}'", env) == ["echo", "x; rm -rf /"]


def test_unknown_variables_are_left_alone() -> None:
    assert render_command("echo $NOPE", {}) == ["echo", "$NOPE"]
