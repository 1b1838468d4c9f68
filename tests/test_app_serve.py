"""`bsegn serve`: the JSON API (FastAPI's TestClient and a real uvicorn), its guards, and the page in a
real headless Chromium. The model is the tiny bundle of test_app_bundle (random test_resnet, 6 classes)."""
import contextlib
import io
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
from pathlib import Path

import pytest
import torch

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install -e \".[serve]\"")
pytest.importorskip("httpx", reason="FastAPI's TestClient needs httpx (in the test extra)")

from fastapi.testclient import TestClient  # noqa: E402
from PIL import Image  # noqa: E402
from test_app_bundle import CLASSES, SEEN, shared_tiny_bundle  # noqa: E402

from bsegn.app.serve import BackgroundServer, create_app  # noqa: E402
from bsegn.app.serve_engine import Busy, Engine, Limits  # noqa: E402
from bsegn.app.serve_routes import upload_label  # noqa: E402

SMALL = Limits(max_bytes=30_000, max_pixels=50_000)
CHROMIUM, CHROMEDRIVER = shutil.which("chromium") or "/usr/bin/chromium", shutil.which("chromedriver") or "/usr/bin/chromedriver"
log = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return shared_tiny_bundle(tmp_path_factory)


def _engine(bundle, save_dir=None, limits=Limits(), mode="gzsl") -> Engine:
    engine = Engine(bundle, save_dir=save_dir, limits=limits, mode=mode)
    engine.start(background=False)
    return engine


@contextlib.contextmanager
def _serving(bundle, **options):
    """A TestClient on a started engine (options: save_dir, limits, mode)."""
    engine = _engine(bundle, **options)
    with TestClient(create_app(engine)) as test_client:
        yield test_client
    engine.stop()


@pytest.fixture(scope="module")
def client(bundle):
    with _serving(bundle) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def strict(bundle):
    """A server with small limits: 30 kB uploads, 50k pixels."""
    with _serving(bundle, limits=SMALL) as test_client:
        yield test_client


def _png(size=(40, 40), colour=(200, 30, 30), noise=False) -> bytes:
    image = Image.new("RGB", size, colour)
    if noise:
        image = Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _post(client, data: bytes, name="x.png", **fields):
    return client.post("/predict", files={"image": (name, data, "application/octet-stream")}, data=fields)


def test_predict_answers_what_predict_json_prints_for_the_demo_eagle(client, bundle, shared_data, monkeypatch, capsys):
    from bsegn.app.cli import predict_main

    monkeypatch.chdir(shared_data / "demo_images")
    data = Path("eagle.jpg").read_bytes()
    for extra, fields in (([], {}), (["--explain"], {"explain": "1"})):
        assert predict_main(["eagle.jpg", "--model", str(bundle), "--json", *extra]) == 0
        cli = json.loads(capsys.readouterr().out)
        answer = _post(client, data, "eagle.jpg", **fields)
        assert answer.status_code == 200
        served = answer.json()
        assert served == cli and 0.0 <= served["p_unseen"] <= 1.0  # predict --json carries the gate's p_unseen too


def test_p_unseen_is_the_gates(client, bundle):
    """p_unseen is the gate's (its value: test_app_bundle_gate), the same in every mode, above 0.5 exactly
    when the answer's best class is unseen (gzsl); /model names the gate."""
    answer = _post(client, _png(), top_k=str(len(CLASSES))).json()
    assert (answer["p_unseen"] > 0.5) == answer["unseen"] == (not answer["top"][0]["seen"])
    assert _post(client, _png(), top_k="2").json()["p_unseen"] == answer["p_unseen"]  # top_k trims the classes only
    for mode in ("zsl", "seen"):
        with _serving(bundle, mode=mode) as other:
            assert _post(other, _png()).json()["p_unseen"] == answer["p_unseen"]
    assert client.get("/model").json()["gate"] == {"kind": "stacking", "threshold": -0.5, "temperature": 1.0}


def _encoded(kind: str, mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (20, 20)).save(out, format=kind)
    return out.getvalue()


BAD_UPLOADS = {  # name -> (bytes, expected status, words of the message)
    "corrupt": (_png((100, 100), noise=True)[:4000], 422, "corrupt or truncated"),
    "non-image": (b"name,a1\nfoo,1\n" * 20, 415, "not an image"),
    "0-byte file": (b"", 400, "empty (0 bytes)"),
    "over the byte limit": (_png((150, 150), noise=True), 413, "over this server's limit of 30000"),
    "over the pixel limit": (_png((300, 300)), 413, "pixels, over this server's limit of 50000"),
    "GIF": (_encoded("GIF", "P"), 415, "GIF is not accepted"),
    "TIFF": (_encoded("TIFF"), 415, "TIFF images are not accepted"),
}


@pytest.mark.parametrize("case", sorted(BAD_UPLOADS))
def test_a_bad_upload_gets_a_clear_4xx_json_and_the_server_keeps_serving(strict, case):
    data, status, words = BAD_UPLOADS[case]
    answer = _post(strict, data, "my file.png")
    assert answer.status_code == status and words in answer.json()["error"], answer.text
    assert "/proc/self" not in answer.json()["error"] and "my file.png" in answer.json()["error"]
    assert _post(strict, _png()).status_code == 200


def test_requests_without_an_image_file_get_400(client):
    for request in (client.post("/predict"), client.post("/predict", data={"image": "not a file"}),
                    client.post("/predict", json={"image": "x"}),
                    client.post("/predict", files={"other": ("x.png", _png(), "image/png")})):
        assert request.status_code == 400 and "field named `image`" in request.json()["error"]
    assert _post(client, _png(), top_k="0").status_code == 400
    assert _post(client, _png(), top_k="x").status_code == 400


def test_a_body_over_the_limit_is_refused_before_it_is_read(strict):
    client = strict
    huge = b"x" * 4_100_000
    answer = client.post("/predict", files={"image": ("big.png", huge, "image/png")})
    assert answer.status_code == 413 and "request body is over" in answer.json()["error"]

    def chunks():  # no Content-Length: counted as it streams
        for _ in range(50):
            yield b"y" * 100_000

    answer = client.post("/predict", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 413
    assert _post(client, _png()).status_code == 200


@pytest.mark.parametrize("memfd", [True, False])
def test_uploads_leave_no_file_behind(client, monkeypatch, tmp_path, memfd):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if not memfd:
        monkeypatch.delattr(os, "memfd_create")
    descriptors = len(os.listdir("/proc/self/fd"))
    for data in (_png(), BAD_UPLOADS["corrupt"][0]):
        _post(client, data)
    assert list(tmp_path.iterdir()) == []
    assert len(os.listdir("/proc/self/fd")) <= descriptors


def test_routes_answer_503_json_while_the_model_loads_and_500_when_it_failed(bundle, tmp_path):
    engine = Engine(bundle)
    with TestClient(create_app(engine)) as loading:
        for answer in (loading.get("/model"), _post(loading, _png()), loading.post("/classes", json={})):
            assert answer.status_code == 503 and "still loading" in answer.json()["error"]
        assert loading.get("/").status_code == 200 and loading.get("/health").json()["state"] == "loading"
    broken = Engine(tmp_path / "nothing")
    broken.start(background=False)
    with TestClient(create_app(broken)) as failed:
        answer = failed.get("/model")
        assert answer.status_code == 500 and "no such model" in answer.json()["error"]


def test_waiting_requests_are_forwarded_as_one_batch_with_the_same_answers(bundle):
    engine = Engine(bundle)
    engine.start_worker = lambda: None  # hold the worker back while requests queue up
    engine.start(background=False)
    predictor = engine.predictor
    images = torch.stack([predictor.transform(Image.new("RGB", (40, 40), (40 * i, 200 - 40 * i, 90))) for i in range(3)])
    futures = [engine.submit(image, top_k=len(CLASSES)) for image in images]
    for _ in futures:
        engine.admit()
    Engine.start_worker(engine)
    answers = [future.result(timeout=30) for future in futures]
    assert engine.batch_sizes == {3: 1}
    for image, answer in zip(images, answers):
        alone = predictor.predict_tensors(image[None], top_k=len(CLASSES))[0]
        assert [t.name for t in answer.top] == [t.name for t in alone.top]
        assert [t.probability for t in answer.top] == pytest.approx([t.probability for t in alone.top], abs=1e-5)
    engine.stop()


def test_requests_beyond_the_bound_are_told_to_retry(bundle):
    engine = _engine(bundle, limits=Limits(max_pending=2))
    engine.admit(), engine.admit()
    with pytest.raises(Busy):
        engine.admit()
    with TestClient(create_app(engine)) as busy:
        answer = _post(busy, _png())
        assert answer.status_code == 503 and "busy" in answer.json()["error"] and answer.headers["Retry-After"] == "1"
        engine.release()
        assert _post(busy, _png()).status_code == 200
    engine.stop()


def test_classes_are_added_in_memory_and_saved_only_to_a_new_folder_under_save_dir(bundle, tmp_path):
    from bsegn.app.bundle import load_bundle

    original = {p.name: p.read_bytes() for p in sorted(bundle.iterdir())}
    engine = _engine(bundle, save_dir=tmp_path / "saved")
    with TestClient(create_app(engine)) as api:
        answer = api.post("/classes", json={"name": "zebra", "attributes": "0.9,0.1,0.5,0.2,0.7"})
        assert answer.status_code == 200 and answer.json()["added"] == ["zebra"]
        added = api.post("/classes", json={"csv": "name,a0,a1,a2,a3,a4\nokapi,0.1,0.2,0.3,0.4,0.5\n"})
        assert added.status_code == 200
        classes = {c["name"]: c for c in api.get("/model").json()["classes"]}
        assert classes["zebra"] == {"name": "zebra", "seen": False, "added": True} and "okapi" in classes
        ranked = _post(api, _png(), top_k="8").json()["top"]
        assert {"zebra", "okapi"} <= {t["class"] for t in ranked}
        assert api.post("/save", json={"name": "with-zebra"}).json()["saved"] == "with-zebra"
        assert api.post("/save", json={"name": "with-zebra"}).status_code == 409
        for bad in ("../escape", "a/b", "..", ".", "", ".hidden", "x" * 65, "/tmp/abs", None, ["a"]):
            refused = api.post("/save", json={"name": bad})
            assert refused.status_code == 400 and "one plain name" in refused.json()["error"], bad
        assert api.post("/save", content=b'{"name": "f"}', headers={"Content-Type": "text/plain"}).status_code == 415
    saved = load_bundle(tmp_path / "saved" / "with-zebra")
    assert saved.class_names == CLASSES + ["zebra", "okapi"] and saved.seen_mask.tolist()[-2:] == [False, False]
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["with-zebra"]
    assert {p.name: p.read_bytes() for p in sorted(bundle.iterdir())} == original  # the served bundle's own files are never touched
    engine.stop()


def test_a_refit_that_is_not_finite_leaves_the_served_model_unchanged(bundle, monkeypatch):
    import bsegn.generative.classifier as classifier

    fit = classifier.fit_final_classifier
    monkeypatch.setattr(classifier, "fit_final_classifier", lambda *a, **k: fit(*a, **k).apply(
        lambda m: [p.data.fill_(float("nan")) for p in m.parameters(recurse=False)]))
    with _serving(bundle) as api:
        answer = api.post("/classes", json={"name": "far", "attributes": "1,2,3,4,5"})
        assert answer.status_code == 400 and "not finite" in answer.json()["error"]
        assert "far" not in [c["name"] for c in api.get("/model").json()["classes"]] and _post(api, _png()).status_code == 200


@pytest.mark.parametrize("payload, status, words", [
    ({"name": "x", "attributes": "1,2,3"}, 400, "3 attribute values"),
    ({"name": "x", "attributes": "1,2,3,4,nan"}, 400, "NaN or infinity"),
    ({"name": "x", "attributes": "/etc/passwd"}, 400, "1 attribute values"),  # values, never a path to read
    ({"name": "x", "attributes": [1, 2, 3, 4, [5]]}, 400, "must be numbers"),
    ({"name": "x", "attributes": [1, 2, 3, 4, True]}, 400, "must be numbers"),
    ({"name": "class0", "attributes": "1,2,3,4,5"}, 409, "already in the model"),
    ({"name": "CLASS0", "attributes": "1,2,3,4,5"}, 409, "compared ignoring case"),
    ({"name": "class0 ", "attributes": "1,2,3,4,5"}, 409, "already in the model"),  # trimmed, as the CLI does
    ({"name": "x", "attributes": "1,2,3,4,1e39"}, 400, "too large for float32"),
    ({"name": "", "attributes": "1,2,3,4,5"}, 400, "class name is empty"),
    ({"name": 7, "attributes": "1,2,3,4,5"}, 400, "must be text"),
    ({"name": "bad\nname", "attributes": "1,2,3,4,5"}, 400, "non-printing character"),
    ({"name": "bad\x1b[31mname", "attributes": "1,2,3,4,5"}, 400, "non-printing character"),
    ({"name": "x" * 10_000, "attributes": "1,2,3,4,5"}, 400, "at most 100"),
    ({"csv": "name,a0\n"}, 400, "holds no class rows"),
    ({"csv": "name,a0,a1,a2,a3,a4\nq,1,2,3,4,5\nQ,1,2,3,4,5\n"}, 400, "CSV:3: class 'Q' is given twice"),
    ({"csv": "q\tr,1,2,3,4,5\n"}, 400, "non-printing character"),
    ({"csv": "".join(f"c{i},1,2,3,4,5\n" for i in range(51))}, 413, "at most 50 are added at once"),
])
def test_a_bad_class_is_refused_and_the_model_is_unchanged(bundle, payload, status, words):
    """The page and the HTTP API read classes with add-class's own parsing and name rule (issue 25: the API
    took "blue_dotted_circle " beside the model's class; the CLI took newlines, escapes, 10,000 characters)."""
    with _serving(bundle) as api:
        answer = api.post("/classes", json=payload)
        assert answer.status_code == status and words in answer.json()["error"], answer.text
        assert [c["name"] for c in api.get("/model").json()["classes"]] == CLASSES


def test_a_csv_upload_without_header_keeps_its_first_class(bundle):
    """Issue 25: the page's CSV upload dropped a header-less first row ({"added": ["rowB"]} for rows A
    and B), while add-class read the same file whole: both now read it with class_inputs."""
    with _serving(bundle) as api:
        answer = api.post("/classes", json={"csv": "rowA,0.1,0.2,0.3,0.4,0.5\nrowB,0.5,0.4,0.3,0.2,0.1\n"})
        assert answer.status_code == 200 and answer.json()["added"] == ["rowA", "rowB"], answer.text
        header = api.post("/classes", json={"csv": " name , a0,a1,a2,a3,a4\n  rowC ,0.1,0.2,0.3,0.4,0.6\n"})
        assert header.json()["added"] == ["rowC"]  # a header row is skipped, names trimmed


def test_saving_is_off_without_a_save_dir(client):
    answer = client.post("/save", json={"name": "copy"})
    assert answer.status_code == 403 and "--save-dir" in answer.json()["error"]
    assert client.get("/model").json()["saving"] is False


def test_the_page_is_self_contained_and_only_known_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["Content-Security-Policy"]
    folder = Path(__file__).resolve().parent.parent / "app" / "static"
    import re

    for path in folder.iterdir():  # nothing is fetched from elsewhere: no absolute URL in the page's files
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", path.read_text()), path.name
    script = (folder / "serve.js").read_text()  # a class name is shown as text, never parsed as HTML
    assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write", script)
    assert client.get("/static/serve.js").status_code == 200
    for name in ("index.html", "..%2Fserve.py", "serve_engine.py"):
        assert client.get(f"/static/{name}").status_code == 404


def test_the_host_header_is_checked_on_a_loopback_server(bundle):
    engine = _engine(bundle)
    with TestClient(create_app(engine, allowed_hosts=["127.0.0.1"]), base_url="http://127.0.0.1") as api:
        assert api.get("/health").status_code == 200
        assert api.get("/health", headers={"Host": "evil.example"}).status_code == 400
    engine.stop()


def test_upload_names_are_labels_only():
    assert upload_label("../../etc/passwd") == "passwd" and upload_label("C:\\x\\y.jpg") == "y.jpg"
    assert upload_label("a\x00b\nc.png") == "abc.png" and upload_label(None) == upload_label("") == "upload"


def test_serve_cli_refuses_in_one_line_and_warns_off_loopback(bundle, tmp_path, monkeypatch, capsys, bsegn_log):
    import bsegn.app.serve as serve
    from bsegn.app.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "no such model" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert main(["serve", "--model", str(bundle), "--port", str(taken.getsockname()[1])]) == 2
        assert "cannot listen on 127.0.0.1" in capsys.readouterr().err
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert main(["serve", "--model", str(bundle)]) == 2
    assert "needs the serve extra" in capsys.readouterr().err
    monkeypatch.undo()
    monkeypatch.setattr(torch, "set_num_threads", lambda threads: None)  # this process keeps its threads
    no_server = type("NoServer", (), {"run": lambda self, sockets: sockets[0].close()})
    monkeypatch.setattr(serve, "make_server", lambda app, limits: no_server())
    assert main(["serve", "--model", str(bundle), "--host", "0.0.0.0", "--port", "0"]) == 0
    assert "bsegn serve: http://0.0.0.0:" in capsys.readouterr().out
    assert "no authentication" in bsegn_log.text
    bsegn_log.clear()
    assert main(["serve", "--model", str(bundle), "--port", "0"]) == 0 and "no authentication" not in bsegn_log.text


def test_a_real_server_answers_concurrent_clients(bundle):
    import urllib.request

    engine = _engine(bundle)
    body, boundary = _multipart(_png())
    answers = []

    def client_thread(url):
        for _ in range(3):
            request = urllib.request.Request(f"{url}/predict", data=body, method="POST",
                                             headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
            with urllib.request.urlopen(request, timeout=30) as response:
                answers.append(json.loads(response.read()))

    with BackgroundServer(create_app(engine)) as url:
        threads = [threading.Thread(target=client_thread, args=(url,)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    engine.stop()
    assert len(answers) == 18 and len({json.dumps(a["top"][0]) for a in answers}) == 1


def _multipart(data: bytes, name="x.png") -> tuple[bytes, str]:
    boundary = "bsegnboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, boundary


@pytest.mark.slow
def test_the_page_in_headless_chromium_uploads_an_image_and_shows_the_answer(bundle, tmp_path, record_property):
    if not (os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)):
        pytest.skip("Chromium is absent: apt-get install -y chromium chromium-driver (as .ci/run does)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (it is in the test extra)")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "red square.png"
    image.write_bytes(_png((64, 64)))
    engine = _engine(bundle)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic",
                 f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900"):
        options.add_argument(flag)
    with BackgroundServer(create_app(engine)) as url:
        expected = _post(TestClient(create_app(engine)), image.read_bytes(), top_k="5").json()
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        try:
            driver.get(url)
            WebDriverWait(driver, 30).until(lambda d: d.find_element(By.ID, "state").text == "ready")
            driver.find_element(By.ID, "file").send_keys(str(image))
            card = WebDriverWait(driver, 30).until(lambda d: d.find_element(By.CSS_SELECTOR, ".result.done"))
            best = expected["top"][0]
            assert card.find_element(By.CSS_SELECTOR, ".top-class").text == best["class"]
            assert card.find_element(By.CSS_SELECTOR, ".badge").text == ("SEEN" if best["seen"] else "UNSEEN")
            assert "p(unseen)" in card.text and card.find_elements(By.CSS_SELECTOR, ".explain-row")
            seen_list = driver.find_element(By.ID, "seen").text
            assert all(CLASSES[c] in seen_list for c in SEEN)
            milliseconds = float(card.get_attribute("data-ms"))
            driver.save_screenshot(str(tmp_path / "serve.png"))
        finally:
            driver.quit()
    engine.stop()
    record_property("upload_to_answer_ms", milliseconds)
    log.warning("browser: upload to answer in %.0f ms (screenshot %s)", milliseconds, tmp_path / "serve.png")
    assert (tmp_path / "serve.png").stat().st_size > 1000

