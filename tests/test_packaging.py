"""What a wheel of the project ships: the packages, the built-in plugins' entry points, and the
demo page's files where server/pages.py looks for them outside a checkout."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_ships_static_files_and_plugin_entry_points(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path),
                    str(ROOT)], check=True, capture_output=True, timeout=180)
    (wheel,) = tmp_path.glob("switchboard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for f in (ROOT / "static").iterdir():
        assert any(n.endswith(f"/data/share/switchboard/static/{f.name}") for n in names), f.name
    assert "server/app.py" in names and "plugins/chat.py" in names
    assert "server/py.typed" in names and "server/tools/client.py" in names  # PEP 561; tools/
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    for line in ("switchboard = server.cli:main", "chat = plugins.chat:ChatPlugin",
                 "typing = plugins.typing_indicator:TypingPlugin",
                 "presence = plugins.presence:PresencePlugin",
                 "notification = plugins.notification:NotificationPlugin"):
        assert line in entry_points
