"""`bsegn serve` under a careless or hostile client (issue 25): it refuses a damaged bundle before it
listens, keeps uploads in memory, creates no compile cache, logs an aborted upload as one debug line,
answers JSON (valid JSON: never a bare NaN) for everything, bad Host headers included. The tiny bundle
of test_app_bundle; fast."""
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e \".[serve]\"")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (in the test extra)")

from fastapi.testclient import TestClient
from test_app_bundle import shared_tiny_bundle
from test_app_bundle_checks import _set, rewrite_config
from test_app_serve import _engine, _multipart, _png, _post, _serving

from bsegn.app.bundle import MODEL_NAME
from bsegn.app.serve import BackgroundServer, create_app


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return shared_tiny_bundle(tmp_path_factory)


def _strict_json(text: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_serve_refuses_a_damaged_bundle_in_one_line_before_it_listens(bundle, tmp_path, capsys, monkeypatch):
    """Issue 25: `bsegn serve --model <flipped byte>` printed its URL and stayed up, /predict answering 500."""
    from bsegn.app import serve
    from bsegn.app.cli import main

    damaged = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    data = bytearray((damaged / MODEL_NAME).read_bytes())
    data[len(data) // 2] ^= 0x01
    (damaged / MODEL_NAME).write_bytes(bytes(data))
    listened = []
    monkeypatch.setattr(serve, "bind", lambda host, port: listened.append(port) or socket.socket())
    monkeypatch.setattr(serve, "make_server", lambda app, limits: type("NoServer", (), {"run": lambda *a, **k: None})())
    assert main(["serve", "--model", str(damaged), "--port", "0"]) == 2
    captured = capsys.readouterr()
    assert "does not match the sha256" in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert listened == [] and "http://" not in captured.out


def test_serve_creates_no_compile_cache_folder(bundle, tmp_path):
    """Issue 25: the server created an empty `$TMPDIR/torchinductor_<user>/` (torchvision imports
    torch._dynamo, which makes its cache folder on import). A real `bsegn serve` loads the model, then
    finds its port taken and exits: its temporary folder stays empty."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        done = subprocess.run([sys.executable, "-c", "import sys; from bsegn.app.cli import main; sys.exit(main())",
                               "serve", "--model", str(bundle), "--port", str(taken.getsockname()[1])],
                              capture_output=True, text=True, timeout=300, check=False,
                              env={**{k: v for k, v in os.environ.items()
                                      if k != "TORCHINDUCTOR_CACHE_DIR"},  # torch sets it in this process
                                   "TMPDIR": str(temp), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 2 and "cannot listen on 127.0.0.1" in done.stderr, done.stderr[-2000:]
    assert sorted(p.name for p in temp.iterdir()) == []


def test_uploads_are_read_in_memory_up_to_the_size_limit(bundle, monkeypatch):
    """Issue 25: uploads over 1 MB were spooled to a temporary file on disk (Starlette's default) while
    the README said uploads are decoded in memory. A 1.5 MB upload makes no temporary file."""
    spooled = []
    make = tempfile.TemporaryFile
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **k: spooled.append(1) or make(*a, **k))
    data = _png((720, 720), noise=True)
    assert len(data) > 1_400_000
    with _serving(bundle) as api:
        answer = _post(api, data)
    assert answer.status_code == 200 and spooled == [], answer.text


def test_a_client_that_disconnects_mid_upload_is_one_debug_line(bundle, bsegn_log):
    """Issue 25: 70 aborted uploads wrote 4,624 log lines (a ClientDisconnect traceback each)."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    uvicorn_log = logging.getLogger("uvicorn.error")
    bsegn_log.set_level(logging.DEBUG, logger="bsegn.app")  # serve_engine and serve_routes log as their modules
    engine = _engine(bundle)
    body, boundary = _multipart(_png((200, 200), noise=True))
    server = BackgroundServer(create_app(engine))  # uvicorn sets its loggers up here: the handler goes after
    uvicorn_log.addHandler(handler)
    try:
        with server as url:
            port = int(url.rsplit(":", 1)[1])
            for _ in range(3):
                with socket.create_connection(("127.0.0.1", port)) as client:
                    client.sendall((f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
                                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n").encode()
                                   + body[:len(body) // 2])
                    time.sleep(0.2)
            time.sleep(0.5)
            answer = TestClient(create_app(engine))  # the server still answers
            assert _post(answer, _png()).status_code == 200
    finally:
        uvicorn_log.removeHandler(handler)
        engine.stop()
    assert [r for r in records if r.levelno >= logging.WARNING] == [], [r.getMessage() for r in records]
    gone = [r for r in bsegn_log.records if "disconnected" in r.getMessage()]
    assert len(gone) == 3 and all(r.levelno == logging.DEBUG and not r.exc_info for r in gone)


def test_a_bad_host_header_is_answered_in_json(bundle):
    """Issue 25: an invalid Host header was answered in plain text."""
    engine = _engine(bundle)
    with TestClient(create_app(engine, allowed_hosts=["127.0.0.1", "localhost", "::1", "[::1]"]),
                    base_url="http://127.0.0.1") as api:
        for host in ("127.0.0.1", "127.0.0.1:7860", "localhost:80", "[::1]:7860", "LOCALHOST"):
            assert api.get("/health", headers={"Host": host}).status_code == 200, host
        for host in ("evil.example", "evil.example:7860", "127.0.0.1.evil.example", "[::1", ""):
            answer = api.get("/health", headers={"Host": host})
            assert answer.status_code == 400 and "Host header" in answer.json()["error"], host
    engine.stop()


def test_every_answer_is_valid_json_even_with_numbers_that_are_not(bundle, tmp_path):
    """Issue 25: a number that was not finite made the server answer a plain-text 500 ("Out of range float
    values are not JSON compliant"). A bundle whose card metric is NaN (hash recomputed: metrics are shown,
    never computed with) is served with null; a forward that fails answers a JSON 500."""
    odd = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    rewrite_config(odd, _set("metrics/H", float("nan")))
    engine = _engine(odd)
    with TestClient(create_app(engine), raise_server_exceptions=False) as api:
        card = api.get("/model")
        assert card.status_code == 200 and _strict_json(card.text)["metrics"]["H"] is None
        answer = _post(api, _png())
        assert answer.status_code == 200 and _strict_json(answer.text)["top"]
        engine.predictor.predict_tensors = lambda *a, **k: 1 / 0
        failed = _post(api, _png())
        assert failed.status_code == 500 and "internal error (ZeroDivisionError)" in _strict_json(failed.text)["error"]
    engine.stop()
