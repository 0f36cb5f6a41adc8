"""The web page (miniplaces_ext.app): its JSON API in-process (FastAPI's TestClient), and the page
itself in Debian's headless chromium driven by selenium against a real server process: upload a
val image, compare the top-5 with predict's JSON, CAM and neighbour images loaded, a dream, a bad
file's message, 20 concurrent requests, Ctrl-C. Screenshots go to $MINIPLACES_SCREENSHOTS (or a
temporary folder)."""
from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from conftest import PROVIDED_WEIGHTS, REPO, miniplaces_root, requires_data, requires_weights

fastapi = pytest.importorskip("fastapi", reason="the [app] extra is not installed (pip install -e '.[app]')")
from fastapi.testclient import TestClient  # noqa: E402

from miniplaces_ext import app as webapp  # noqa: E402
from miniplaces_ext import models, predict, uploads  # noqa: E402
from miniplaces_ext.scene_service import PhotoStore, SceneService  # noqa: E402

pytestmark = [requires_weights, requires_data]
GALLERY = 40
VAL = [miniplaces_root() / "images" / "val" / f"{i:08d}.jpg" for i in (1, 2, 3, 4)]


def _encode(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def _predict_json(path: Path, tmp: Path, arch: str = "resnet18") -> dict:
    """predict's JSON for one image (our convolutions), as a user would get it."""
    out = tmp / f"{path.stem}_{arch}.json"
    weights = PROVIDED_WEIGHTS if arch == "resnet18" else _alexnet_weights()
    predict.main([str(path), "--arch", arch, "--weights", str(weights), "--use-custom-conv", "--json", str(out)])
    return json.loads(out.read_text())["predictions"][str(path)]


def _alexnet_weights() -> Path:
    """The course AlexNet that scripts/setup.sh writes from the provided factored file."""
    try:
        return models.find_weights("alexnet")
    except FileNotFoundError as exc:
        pytest.skip(f"no AlexNet weights ({exc}); scripts/setup.sh writes models/alexnet.pt")


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    service = SceneService("resnet18", str(PROVIDED_WEIGHTS), str(miniplaces_root()), GALLERY,
                           tmp_path_factory.mktemp("cache"))
    with TestClient(webapp.create_app(service, max_upload_bytes=2 * 2**20)) as c:
        yield c


def _upload(client, payload: bytes, name: str = "photo.jpg", conv: str = "custom"):
    return client.post(f"/api/photo?conv={conv}", files={"file": (name, payload, "application/octet-stream")})


def test_upload_gives_predicts_answer(client, tmp_path):
    expected = _predict_json(VAL[0], tmp_path)
    got = _upload(client, VAL[0].read_bytes()).json()
    assert [t["class"] for t in got["top"]] == [t["class"] for t in expected["top"]]
    for g, e in zip(got["top"], expected["top"]):
        assert g["probability"] == pytest.approx(e["probability"], abs=1e-5)
    assert got["environment"] == expected["environment"]
    assert got["agreement"]["same_topk"] and got["agreement"]["max_abs_probability_difference"] < 1e-4
    torch_side = client.get(f"/api/classify/{got['photo_id']}?conv=torch").json()
    assert [t["class"] for t in torch_side["top"]] == [t["class"] for t in got["top"]]


@pytest.mark.parametrize("image, fmt", [(Image.new("CMYK", (200, 150), (0, 120, 200, 10)), "JPEG"),
                                        (Image.new("L", (150, 200), 90), "PNG"),
                                        (Image.new("RGBA", (160, 160), (20, 200, 20, 128)), "PNG"),
                                        (Image.new("I;16", (130, 140), 30000), "PNG"),
                                        (Image.new("P", (140, 130), 7), "GIF")],
                         ids=["cmyk", "grayscale", "alpha", "16-bit", "palette"])
def test_any_image_mode_is_accepted(client, image, fmt):
    response = _upload(client, _encode(image, fmt), f"x.{fmt.lower()}")
    assert response.status_code == 200, response.text
    assert len(response.json()["top"]) == 5


def _bad_files() -> dict:
    jpeg = VAL[1].read_bytes()
    return {
        "text": (b"these are not the pixels you are looking for\n" * 20, 400, "not an image"),
        "truncated": (jpeg[: len(jpeg) // 2], 400, "truncated or corrupt"),
        "bomb": (_encode(Image.new("1", (9000, 9000)), "PNG"), 400, "the limit is 50 megapixels"),
        "empty": (b"", 400, "empty"),
        "too-large": (b"\xff" * (3 * 2**20), 413, "the limit is 2 MB"),
    }


@pytest.mark.parametrize("kind", list(_bad_files()))
def test_bad_uploads_get_one_line_messages(client, kind):
    payload, status, message = _bad_files()[kind]
    response = _upload(client, payload)
    assert response.status_code == status
    error = response.json()["error"]
    assert message in error and "\n" not in error and "Traceback" not in response.text


def test_bad_requests_are_json_errors(client):
    photo_id = _upload(client, VAL[0].read_bytes()).json()["photo_id"]
    for path, message in [(f"/api/cam/{photo_id}?class_name=nowhere", "unknown class"),
                          (f"/api/cam/{photo_id}", "class_name"),
                          ("/api/cam/0123?class_name=palace", "upload it again"),
                          (f"/api/classify/{photo_id}?conv=cudnn", "conv must be one of"),
                          ("/api/gallery/99999", "no such gallery image"),
                          ("/api/dream/nope", "unknown dream")]:
        response = client.get(path)
        assert 400 <= response.status_code < 500 and message in response.json()["error"], path
    response = client.post("/api/dream", json={"photo_id": photo_id, "layer": "layer9"})
    assert response.status_code == 400 and "layer must be one of" in response.json()["error"]


def test_cam_neighbours_and_dream(client):
    photo_id = _upload(client, VAL[0].read_bytes()).json()["photo_id"]
    cam = client.get(f"/api/cam/{photo_id}?class_name=palace").json()
    overlay = Image.open(io.BytesIO(base64.b64decode(cam["png"].split(",", 1)[1])))
    assert overlay.size == Image.open(VAL[0]).size and cam["method"] == "cam"
    deadline = time.time() + 120
    while (found := client.get(f"/api/neighbours/{photo_id}").json())["status"] != "ready":
        assert found["status"] == "indexing" and time.time() < deadline, found
        time.sleep(0.5)
    assert len(found["neighbours"]) == 5 and all(n["distance"] > 1e-3 for n in found["neighbours"])  # not itself
    assert client.get(found["neighbours"][0]["url"]).headers["content-type"] == "image/jpeg"
    job = client.post("/api/dream", json={"photo_id": photo_id, "layer": "layer2", "octaves": 1, "steps": 2}).json()
    while job["state"] in ("queued", "running"):
        time.sleep(0.2)
        job = client.get(f"/api/dream/{job['job']}").json()
    assert job["state"] == "done" and job["progress"] == 1.0 and job["png"].startswith("data:image/png;base64,")


def test_both_networks_side_by_side(tmp_path):
    """One page, two networks over one photo store: the same uploaded photo asked of AlexNet gives
    predict --arch alexnet's top-5; an unknown arch is a one-line 400; a dream runs on either."""
    photos = PhotoStore()
    services = {arch: SceneService(arch, str(weights), str(miniplaces_root()), GALLERY, tmp_path, photos=photos)
                for arch, weights in (("resnet18", PROVIDED_WEIGHTS), ("alexnet", _alexnet_weights()))}
    expected = _predict_json(VAL[1], tmp_path, "alexnet")
    with TestClient(webapp.create_app(services)) as c:
        info = c.get("/api/info").json()
        assert info["arch"] == "resnet18" and list(info["networks"]) == ["resnet18", "alexnet"]
        assert info["networks"]["alexnet"]["default_dream_layer"] == "conv5"
        photo_id = _upload(c, VAL[1].read_bytes()).json()["photo_id"]  # asked of ResNet-18 (the default)
        got = c.get(f"/api/classify/{photo_id}?arch=alexnet").json()
        assert [t["class"] for t in got["top"]] == [t["class"] for t in expected["top"]]
        for g, e in zip(got["top"], expected["top"]):
            assert g["probability"] == pytest.approx(e["probability"], abs=1e-5)
        bad = c.get(f"/api/classify/{photo_id}?arch=vgg")
        assert bad.status_code == 400 and bad.json() == {"error": "arch must be one of resnet18, alexnet, got 'vgg'"}
        job = c.post("/api/dream", json={"photo_id": photo_id, "layer": "conv3", "octaves": 1, "steps": 1,
                                         "arch": "alexnet"}).json()
        while job["state"] in ("queued", "running"):
            time.sleep(0.2)
            job = c.get(f"/api/dream/{job['job']}").json()
        assert job["state"] == "done", job


def test_without_the_data_set_the_page_says_so(tmp_path):
    service = SceneService("resnet18", str(PROVIDED_WEIGHTS), str(tmp_path / "nowhere"), None, tmp_path)
    with TestClient(webapp.create_app(service)) as c:
        gallery = c.get("/api/info").json()["gallery"]
        assert gallery["status"] == "unavailable" and "Miniplaces data not found" in gallery["message"]
        assert "Miniplaces data not found" in c.post("/api/photo/random").json()["error"]
        assert len(_upload(c, VAL[0].read_bytes()).json()["top"]) == 5  # predictions need only the weights


# --- a real server and a real browser ------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    port = _free_port()
    weights = tmp_path_factory.mktemp("weights")  # both networks, found as $MINIPLACES_WEIGHTS/<arch>.pt
    (weights / "resnet18.pt").symlink_to(PROVIDED_WEIGHTS)
    (weights / "alexnet.pt").symlink_to(_alexnet_weights())
    env = {**os.environ, "MINIPLACES_ROOT": str(miniplaces_root()), "MINIPLACES_WEIGHTS": str(weights),
           "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "miniplaces_ext.app", "--port", str(port),
                             "--gallery-limit", str(GALLERY), "--cache-dir",
                             str(tmp_path_factory.mktemp("cache"))],
                            cwd=tmp_path_factory.mktemp("cwd"), env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    import urllib.request
    for _ in range(120):
        try:
            urllib.request.urlopen(url + "/api/info", timeout=1)
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.5)
    yield url, proc
    if proc.poll() is None:
        proc.kill()


def test_twenty_concurrent_requests_all_answered_correctly(server):
    import httpx
    url, _ = server
    expected = {}
    for path in VAL:  # one at a time first
        r = httpx.post(url + "/api/photo", files={"file": (path.name, path.read_bytes())}, timeout=60)
        expected[path.name] = [t["class"] for t in r.json()["top"]]

    def ask(i: int):
        path = VAL[i % len(VAL)]
        r = httpx.post(url + "/api/photo", files={"file": (path.name, path.read_bytes())}, timeout=120)
        return path.name, r.status_code, [t["class"] for t in r.json()["top"]]

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(ask, range(20)))
    assert len(answers) == 20
    for name, status, top in answers:
        assert status == 200 and top == expected[name], name


def _chrome():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (the [app-test] extra)")
    if shutil.which("chromium") is None or shutil.which("chromedriver") is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (scripts/setup.sh installs them as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1100", "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))


def test_the_page_in_a_real_browser(server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    url, proc = server
    shots = Path(os.environ.get("MINIPLACES_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    expected = _predict_json(VAL[0], tmp_path)
    driver = _chrome()
    try:
        wait = WebDriverWait(driver, 120)
        driver.get(url)
        wait.until(lambda d: "resnet18" in d.find_element(By.ID, "model-line").text)
        driver.find_element(By.ID, "file-input").send_keys(str(VAL[0]))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#top5 li")) == 5)
        shown = [li.get_attribute("data-class") for li in driver.find_elements(By.CSS_SELECTOR, "#top5 li")]
        assert shown == [t["class"] for t in expected["top"]]
        assert "same top-5" in driver.find_element(By.ID, "agreement").text
        loaded = "return arguments[0].complete && arguments[0].naturalWidth > 0"
        wait.until(lambda d: d.execute_script(loaded, d.find_element(By.ID, "cam-image")))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "img.neighbour")) == 5 and all(
            d.execute_script(loaded, img) for img in d.find_elements(By.CSS_SELECTOR, "img.neighbour")))
        driver.find_element(By.ID, "dream-button").click()  # the page's defaults: layer4, 3 octaves x 10 steps
        wait.until(lambda d: d.find_element(By.ID, "dream-progress").is_displayed())
        wait.until(lambda d: d.find_element(By.ID, "dream-image").is_displayed() and
                   d.execute_script(loaded, d.find_element(By.ID, "dream-image")))
        driver.find_element(By.CSS_SELECTOR, 'input[name="conv"][value="torch"]').click()
        wait.until(lambda d: "our convolutions give the same top-5" in d.find_element(By.ID, "agreement").text)
        driver.find_element(By.CSS_SELECTOR, 'input[name="conv"][value="custom"]').click()
        wait.until(lambda d: "torch's convolutions give the same top-5" in d.find_element(By.ID, "agreement").text)
        driver.set_window_size(1400, driver.execute_script("return document.documentElement.scrollHeight") + 160)
        driver.save_screenshot(str(shots / "app.png"))

        alexnet = _predict_json(VAL[0], tmp_path, "alexnet")  # the network switch: same photo, AlexNet
        shown_classes = "return [...document.querySelectorAll('#top5 li')].map((li) => li.dataset.class)"
        from selenium.webdriver.support.select import Select
        Select(driver.find_element(By.ID, "arch")).select_by_value("alexnet")
        wait.until(lambda d: "alexnet" in d.find_element(By.ID, "model-line").text)
        top = [t["class"] for t in alexnet["top"]]
        wait.until(lambda d: d.execute_script(shown_classes) == top)
        assert driver.find_element(By.ID, "dream-layer").get_attribute("value") == "conv5"
        Select(driver.find_element(By.ID, "arch")).select_by_value("resnet18")
        wait.until(lambda d: d.execute_script(shown_classes) == shown)

        bad = tmp_path / "holiday.jpg"
        bad.write_text("not a photo at all")
        driver.find_element(By.ID, "file-input").send_keys(str(bad))
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "not an image" in driver.find_element(By.ID, "error").text
        driver.save_screenshot(str(shots / "app_error.png"))
    finally:
        driver.quit()


def test_ctrl_c_stops_the_server(server):
    _, proc = server
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "stopped" in out and "Traceback" not in out, out
