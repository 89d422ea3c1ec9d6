"""The distribution as a user gets it: a wheel whose only import root is ``vigil``, which works
from a folder that holds modules named like our source roots (``schemas.py``, ``services.py``)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_wheel_has_one_import_root_and_works_beside_generic_names(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(ROOT), "-w", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("vigil-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        zf.extractall(tmp_path / "site")
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"vigil"}, tops
    for shipped in ("vigil/client.py", "vigil/wire/events.py", "vigil/lab/examples/lab.yaml"):
        assert shipped in names, f"{shipped} missing from the wheel"

    # An application's folder with its own schemas.py and services.py, the wheel's files and
    # our dependencies, and nothing of this checkout (-S: no .pth file points back here).
    app = tmp_path / "app"
    app.mkdir()
    (app / "schemas.py").write_text("X = 1\n")
    (app / "services.py").write_text("Y = 2\n")
    deps = sysconfig.get_paths()["purelib"]
    code = (
        f"import sys; sys.path[1:1] = [{str(tmp_path / 'site')!r}, {deps!r}]; "
        "import vigil.client, vigil.wire.events, schemas, services; "
        "assert schemas.X == 1 and services.Y == 2; "
        "assert all(p.startswith(sys.path[1]) for p in vigil.__path__), vigil.__path__; "
        "print('ok')"
    )
    ran = subprocess.run(
        [sys.executable, "-S", "-c", code], cwd=app, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0 and ran.stdout.strip() == "ok", ran.stderr
