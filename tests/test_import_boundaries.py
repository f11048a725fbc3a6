"""Import boundaries between the four packages (docs/architecture.md, "Import boundaries").

The library is what users embed: importing it must not drag in the CLI, the simulator, the
COM runtime or the CLI's rendering (``rich``), nor the server-only gRPC health/reflection
services. The simulator and the COM runtime use the library's public value module and a
short list of private helpers, never the client root (whose ``__init__`` loads the client).
Checked in a fresh interpreter per case: the test process has everything imported already.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from support.probe import fresh_python

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGES = ("mxgateway", "mxgateway_cli", "mxgateway_sim", "mxgateway_mxaccess")

_PROBE = """
import json, sys
import {module}
print(json.dumps(sorted(sys.modules)))
"""


def _loaded_by(module: str) -> set[str]:
    return set(fresh_python(_PROBE.format(module=module)))


def _under(loaded: set[str], *roots: str) -> list[str]:
    return sorted(m for m in loaded if any(m == r or m.startswith(r + ".") for r in roots))


def test_import_mxgateway_loads_neither_cli_simulator_nor_rich() -> None:
    loaded = _loaded_by("mxgateway")
    assert "mxgateway._client" in loaded  # the probe really imported the library
    assert not _under(loaded, "mxgateway_cli", "mxgateway_sim", "mxgateway_mxaccess"), loaded
    assert not _under(loaded, "rich", "cryptography", "sqlglot", "mssql_python")
    # grpc's own __init__ touches the bare namespace packages; the services must not load.
    assert not _under(loaded, "grpc_health.v1", "grpc_reflection.v1alpha")


def test_import_mxgateway_values_is_enough_for_values() -> None:
    loaded = _loaded_by("mxgateway.values")
    assert not _under(loaded, "mxgateway_cli", "mxgateway_sim", "rich")


def test_import_mxgateway_sim_loads_neither_cli_nor_rich() -> None:
    # The package's names load on first use (PEP 562): its server module is the probe.
    loaded = _loaded_by("mxgateway_sim._server")
    assert "mxgateway_sim._sessions" in loaded
    assert not _under(loaded, "mxgateway_cli", "mxgateway_mxaccess", "rich")


def test_simulator_entry_points_load_no_grpc() -> None:
    # mxgw-sim and mxgw-gateway set gRPC's settings before it loads (mxgateway_sim._grpcenv):
    # their entry module and the package's __init__ must not load it themselves.
    loaded = _loaded_by("mxgateway_sim._launch")
    assert "mxgateway_sim._grpcenv" in loaded
    assert not _under(loaded, "grpc", "mxgateway", "google.protobuf"), loaded


def test_cli_entry_module_loads_no_simulator() -> None:
    # ``mxgw-py --help`` itself is covered per command in tests/cli/test_startup.py.
    loaded = _loaded_by("mxgateway_cli.main")
    assert not _under(loaded, "mxgateway_sim", "mxgateway_mxaccess", "rich")


# Private library modules the simulator and COM runtime may use: logging hygiene, versions,
# the status rule, the secret helpers, the incident format and grpc.aio's batch of a send
# and a receive are shared by design (docs/architecture.md).
_SERVER_MAY_IMPORT = {
    "mxgateway.values",
    "mxgateway.commands",
    "mxgateway.generated",
    "mxgateway._logsafe",
    "mxgateway._version",
    "mxgateway._status",
    "mxgateway._secret",
    "mxgateway._incident",
    "mxgateway._grpcbatch",
}


def _library_imports(package: str) -> list[tuple[str, str]]:
    found = []
    for path in sorted((SRC / package).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "mxgateway":
                    names = [f"mxgateway.{a.name}" for a in node.names]
                else:
                    names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            for name in names:
                if name == "mxgateway" or name.startswith("mxgateway."):
                    found.append((str(path.relative_to(SRC)), name))
    return found


@pytest.mark.parametrize("package", ["mxgateway_sim", "mxgateway_mxaccess"])
def test_server_side_uses_only_the_shared_library_modules(package: str) -> None:
    bad = [
        (where, name)
        for where, name in _library_imports(package)
        if not any(name == ok or name.startswith(ok + ".") for ok in _SERVER_MAY_IMPORT)
    ]
    assert bad == []


@pytest.mark.parametrize("package", PACKAGES)
def test_every_package_ships_py_typed(package: str) -> None:
    assert (SRC / package / "py.typed").is_file()


def test_only_the_transport_reads_the_channel_state() -> None:
    # The transport is the library's one gRPC seam: connectivity is asked through it
    # (Transport.pause, Transport.wait_ready), never read from the channel elsewhere.
    readers = [
        path.name
        for path in sorted((SRC / "mxgateway").glob("*.py"))
        if any(
            call in path.read_text(encoding="utf-8")
            for call in (".get_state(", ".wait_for_state_change(", "ChannelConnectivity")
        )
    ]
    assert readers == ["_transport.py"]
