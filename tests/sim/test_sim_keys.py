"""API keys of ``mxgw-sim``: strength rules, one-line key-file errors, reload on SIGHUP."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from simhelpers import Gw, serve_process

from mxgateway.generated import mxaccess_gateway_pb2 as pb
from mxgateway_sim import ApiKeyStore, new_key
from mxgateway_sim._auth import KeyFormatError, check_key, load_keys_file

CLI = [sys.executable, "-c", "from mxgateway_sim.cli import run; run()"]
LIVE = "L1_Mixer.RunHours"
"""A tag of the seeded Galaxy whose value changes every scan."""

WEAK_KEYS = [
    "mxgw_a_b",  # the attack's example
    "mxgw_ops_short-secret1",  # 14-character secret
    "mxgw_ops_" + "s" * 15,
    "mxgw_op!s_" + "s" * 32,  # key id with a character outside the rule
    "mxgw_" + "k" * 65 + "_" + "s" * 32,  # key id too long
    "mxgw_ops_" + "s" * 20 + "/+=",  # secret with characters outside the rule
    "mxgw_ops_" + "s" * 257,
]


@pytest.mark.parametrize("key", WEAK_KEYS)
def test_weak_keys_are_refused_without_echo(key: str) -> None:
    with pytest.raises(KeyFormatError) as err:
        ApiKeyStore().add(key)
    assert key not in str(err.value)
    secret = key.split("_", 2)[2]
    assert len(secret) < 4 or secret not in str(err.value)


def test_created_keys_and_the_rule_agree() -> None:
    for _ in range(50):
        key_id, secret = check_key(new_key())
        assert len(secret) >= 16 and key_id
    store = ApiKeyStore()
    store.add("mxgw_ops-1_" + "0123456789abcdef")  # exactly the minimum
    assert store.authenticate("Bearer mxgw_ops-1_0123456789abcdef") is not None


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


def _assert_one_line_usage_error(result: subprocess.CompletedProcess[str], *hidden: str) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for text in hidden:
        assert text not in result.stderr
    return lines[0]


def test_serve_refuses_a_weak_key_on_the_command_line() -> None:
    result = _run_cli("serve", "--plaintext", "--api-key", "mxgw_a_b")
    line = _assert_one_line_usage_error(result, "mxgw_a_b")
    assert "secret" in line


def test_a_key_given_in_place_of_the_keys_file_is_not_echoed() -> None:
    key = new_key()
    result = _run_cli("serve", "--plaintext", "--api-keys-file", key)
    line = _assert_one_line_usage_error(result, key.split("_", 2)[2])
    assert "--api-keys-file: the file it names does not exist" in line


@pytest.mark.slow
def test_malformed_keys_files_are_one_line_errors(tmp_path: Path) -> None:
    strong = new_key()
    weak = "mxgw_weak_tooshort"
    cases: dict[str, bytes] = {
        "truncated.json": b'{"keys": [{"key": "' + strong.encode() + b'"',
        "binary.json": b"\xff\xfe\x00garbage",
        "scopes-number.json": json.dumps({"keys": [{"key": strong, "scopes": 5}]}).encode(),
        "scopes-ints.json": json.dumps([{"key": strong, "scopes": [1, 2]}]).encode(),
        "name-object.json": json.dumps([{"key": strong, "name": {"x": 1}}]).encode(),
        "scope-newline.json": json.dumps([{"key": strong, "scopes": ["admin\nx"]}]).encode(),
        "no-key.json": json.dumps([{"scopes": ["admin"]}]).encode(),
        "not-a-list.json": json.dumps({"keys": {"key": strong}}).encode(),
        "weak.txt": f"# ops\n{weak} admin ops\n".encode(),
        "no-scopes.txt": f"{strong}\n".encode(),
        "duplicate.txt": f"{strong} admin\n{strong} admin\n".encode(),
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        result = _run_cli("serve", "--plaintext", "--api-keys-file", str(path))
        line = _assert_one_line_usage_error(result, strong, weak, "tooshort")
        assert name in line, line
    # A path that does not exist may be a secret given in its place: not named (840a046).
    missing = tmp_path / "missing.json"
    line = _assert_one_line_usage_error(
        _run_cli("serve", "--plaintext", "--api-keys-file", str(missing))
    )
    assert "the file it names does not exist" in line and str(missing) not in line
    # A path that exists but cannot be read as a keys file is named.
    result = _run_cli("serve", "--plaintext", "--api-keys-file", str(tmp_path))
    assert str(tmp_path) in _assert_one_line_usage_error(result)


def test_load_keys_file_names_the_entry_not_the_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    good, weak = new_key(), "mxgw_x_y"
    path.write_text(json.dumps([{"key": good}, {"key": weak}]))
    with pytest.raises(KeyFormatError) as err:
        load_keys_file(path, ApiKeyStore())
    assert "entry 2" in str(err.value) and weak not in str(err.value)


def _write_keys(path: Path, *keys: str) -> None:
    # Written to a temporary name and renamed, as an operator's tooling would.
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"keys": [{"key": k, "name": f"k{i}"} for i, k in enumerate(keys)]}))
    tmp.replace(path)


async def _open_code(channel: grpc.aio.Channel, key: str) -> grpc.StatusCode:
    try:
        await Gw(channel, key).open("probe")
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _until_code(
    channel: grpc.aio.Channel, key: str, code: grpc.StatusCode, timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    while (seen := await _open_code(channel, key)) != code:
        assert time.monotonic() < deadline, f"still {seen} instead of {code}"
        await asyncio.sleep(0.1)


async def _wait_for_text(path: Path, text: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while text not in (content := await asyncio.to_thread(path.read_text)):
        assert time.monotonic() < deadline, f"{text!r} not logged: {content[-2000:]}"
        await asyncio.sleep(0.1)
    return content


async def test_sighup_reloads_the_keys_file_and_keeps_open_streams(tmp_path: Path) -> None:
    keeper, revoked = new_key(), new_key()
    keys = tmp_path / "keys.json"
    _write_keys(keys, keeper, revoked)
    log = tmp_path / "sim.log"
    args = ["--api-keys-file", str(keys), "--galaxy-db", str(tmp_path / "galaxy.db")]
    async with serve_process(*args, "--scan-interval-ms", "50", log=log) as (proc, address):
        async with grpc.aio.insecure_channel(address) as channel:
            # The key about to be revoked opens a session and an event stream.
            gw = Gw(channel, revoked)
            sid = await gw.open()
            sh = await gw.register(sid)
            await gw.subscribe(sid, sh, LIVE)
            stream = gw.stub.StreamEvents(pb.StreamEventsRequest(session_id=sid), metadata=gw.md)
            first = await asyncio.wait_for(stream.read(), 30)
            assert isinstance(first, pb.MxEvent)

            _write_keys(keys, keeper)
            proc.send_signal(signal.SIGHUP)
            await _until_code(channel, revoked, grpc.StatusCode.UNAUTHENTICATED)
            assert await _open_code(channel, keeper) == grpc.StatusCode.OK
            # The stream opened before the reload keeps delivering events queued after it.
            revoked_at = time.time()
            while True:
                later = await asyncio.wait_for(stream.read(), 30)
                assert isinstance(later, pb.MxEvent) and not later.HasField("stream_fault")
                if later.gateway_timestamp.ToNanoseconds() > revoked_at * 1e9:
                    break
            assert later.worker_sequence > first.worker_sequence
            await _wait_for_text(log, "keys reloaded")

            # A file that does not load keeps the keys in force and says so in one line.
            keys.write_text('{"keys": [')
            proc.send_signal(signal.SIGHUP)
            content = await _wait_for_text(log, "keys reload failed")
            failed = [line for line in content.splitlines() if "keys reload failed" in line]
            assert len(failed) == 1 and "keys.json" in failed[0], content
            assert await _open_code(channel, keeper) == grpc.StatusCode.OK
            assert await _open_code(channel, revoked) == grpc.StatusCode.UNAUTHENTICATED

            # A valid file again: the revoked key can be restored.
            _write_keys(keys, keeper, revoked)
            proc.send_signal(signal.SIGHUP)
            await _until_code(channel, revoked, grpc.StatusCode.OK)
            stream.cancel()
        assert proc.returncode is None  # SIGHUP never stopped the server
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        text = log.read_text()
        assert "Traceback" not in text
        for key in (keeper, revoked):
            assert key.split("_", 2)[2] not in text


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    content=st.one_of(
        st.binary(max_size=200),
        _JSON.map(lambda doc: json.dumps(doc).encode()),
        st.lists(_JSON, max_size=3).map(lambda entries: json.dumps({"keys": entries}).encode()),
        st.text(max_size=200).map(str.encode),
        st.lists(
            st.builds(
                lambda scopes, name: {"key": new_key(), "scopes": scopes, "name": name},
                _JSON | st.lists(st.text(max_size=12), max_size=3),
                _JSON,
            ),
            max_size=3,
        ).map(lambda entries: json.dumps(entries).encode()),
    )
)
def test_any_keys_file_loads_or_fails_with_key_format_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "keys.any"
    path.write_bytes(content)
    try:
        load_keys_file(path, ApiKeyStore())
    except KeyFormatError as exc:
        assert "\n" not in str(exc)
