"""The try-it page in real headless Chromium (Debian's package, driven by Playwright)."""

import re
import shutil
from pathlib import Path

import pytest
from ray import serve

from deployments.app import build_app
from deployments.settings import AppArgs
from images import jpeg
from integration.cluster import serve_on_loopback

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
ASTRONAUT_FACE = (176, 62, 94, 110)  # x, y, w, h, drawn by hand (tests/unit/test_faces.py)


@pytest.fixture(scope="module")
def base_url(tiny_clip_dir):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); .ci/run installs it")
    with serve_on_loopback() as port:
        serve.run(build_app(AppArgs(model=tiny_clip_dir)), name="moderation", route_prefix="/")
        yield f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def browser(base_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser, base_url):
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    page.goto(base_url + "/")
    page.wait_for_selector("input[name=classifier]")
    yield page
    page.close()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("web") / "photo.jpg"
    path.write_bytes(jpeg(800, 600, seed=3))
    return path


def test_upload_shows_bars_for_each_chosen_classifier(page, photo):
    boxes = page.locator("input[name=classifier]")
    assert boxes.count() == 4
    page.uncheck("input[value=offensive]")
    page.uncheck("input[value=face_attributes]")
    page.set_input_files("#file", str(photo))
    page.wait_for_selector("#preview", state="visible", timeout=10_000)  # shown once the file is read
    page.click("#submit")
    page.wait_for_selector("article.card")
    cards = page.locator("article.card")
    assert [cards.nth(i).get_attribute("data-classifier") for i in range(cards.count())] == ["nudity", "gore"]
    assert cards.nth(0).locator(".bar").count() == 3  # explicit, suggestive, none
    for i in range(2):
        assert cards.nth(i).locator(".badge").inner_text() in ("FLAGGED", "not flagged")
        assert "threshold" in cards.nth(i).locator(".verdict").inner_text()
    values = [float(v) for v in cards.nth(0).locator(".bar .value").all_inner_texts()]
    assert values == sorted(values, reverse=True) and abs(sum(values) - 1) < 0.01
    for i, value in enumerate(values):  # each bar is drawn as long as its score
        bar = cards.nth(0).locator(".bar").nth(i)
        track, fill = bar.locator(".track").bounding_box(), bar.locator(".fill").bounding_box()
        assert abs(fill["width"] / track["width"] - value) < 0.02
    assert "model" in page.locator("#status").inner_text()
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "web-ui.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_custom_labels_add_a_custom_card(page, photo):
    page.set_input_files("#file", str(photo))
    page.fill("#labels", "a cat, a dog, a red car")
    page.click("#submit")
    page.wait_for_selector("article.card[data-classifier=custom]")
    custom = page.locator("article.card[data-classifier=custom]")
    assert sorted(custom.locator(".bar .label").all_inner_texts()) == ["a cat", "a dog", "a red car"]
    assert page.locator("article.card[data-classifier]").count() == 5  # four built-ins and the custom labels
    # face_attributes was asked for: the faces card is there, and this generated image has none
    assert "No faces found" in page.locator("article.card.faces").inner_text()
    assert page.locator("#face-boxes .face-box").count() == 0


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    """A real face: scikit-image's astronaut (512x512), her face at about ASTRONAUT_FACE."""
    from PIL import Image
    from skimage import data

    path = tmp_path_factory.mktemp("web") / "astronaut.jpg"
    Image.fromarray(data.astronaut()).save(path, quality=92)
    return path


def test_a_face_is_boxed_on_the_preview_and_listed_in_a_faces_card(page, astronaut, photo):
    assert page.locator("input[value=face_attributes]").is_checked()  # every built-in, as on load
    page.set_input_files("#file", str(astronaut))
    page.wait_for_selector("#preview", state="visible", timeout=10_000)
    page.click("#submit")
    page.wait_for_selector("article.card.faces")
    page.wait_for_selector("#face-boxes .face-box")
    faces = page.locator("article.card.faces")
    text = faces.inner_text()
    assert "1 face" in faces.locator(".badge").inner_text()
    assert "Face 1" in text and "confidence" in text and "No faces found" not in text
    labels = faces.locator(".bar .label").all_inner_texts()
    assert sorted(labels) == ["facial hair", "glasses", "minor", "smiling"]
    for value in faces.locator(".bar .value").all_inner_texts():
        assert 0 <= float(value) <= 1
    x, y, w, h = (int(v) for v in re.findall(r"\d+", text.split("box", 1)[1])[:4])
    ax, ay, aw, ah = ASTRONAUT_FACE  # either detector: its box overlaps the drawn one
    overlap = max(0, min(x + w, ax + aw) - max(x, ax)) * max(0, min(y + h, ay + ah) - max(y, ay))
    assert overlap / (w * h + aw * ah - overlap) >= 0.5, (x, y, w, h)

    boxes = page.locator("#face-boxes .face-box")
    assert boxes.count() == 1 and boxes.nth(0).inner_text() == "1"
    style = boxes.nth(0).evaluate("b => [b.style.left, b.style.top, b.style.width, b.style.height]")
    left, top, width, height = (float(v.rstrip("%")) for v in style)
    assert abs(left - x / 512 * 100) < 1 and abs(top - y / 512 * 100) < 1  # where the card says
    assert abs(width - w / 512 * 100) < 1 and abs(height - h / 512 * 100) < 1

    def drawn_where():  # the box's place on the shown preview, as shares of the preview's size
        img, box = page.locator("#preview").bounding_box(), boxes.nth(0).bounding_box()
        return ((box["x"] - img["x"]) / img["width"], (box["y"] - img["y"]) / img["height"],
                box["width"] / img["width"], img)

    for viewport in ({"width": 1100, "height": 900}, {"width": 390, "height": 844}):
        page.set_viewport_size(viewport)  # the box follows the preview when the page is resized
        page.wait_for_timeout(100)
        fx, fy, fw, img = drawn_where()
        assert img["width"] > 50
        assert abs(fx - x / 512) < 0.03 and abs(fy - y / 512) < 0.03 and abs(fw - w / 512) < 0.03, viewport
    page.set_viewport_size({"width": 1100, "height": 900})
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-ui-faces.png"), full_page=True)

    page.set_input_files("#file", str(photo))  # another image takes the old boxes away
    page.wait_for_selector("#face-boxes .face-box", state="detached", timeout=5_000)


def test_a_known_image_shows_the_bank_it_matched(page, base_url, tmp_path):
    from banks.hashes import file_hashes
    from clients.http import ModerationClient

    image = tmp_path / "known.jpg"
    image.write_bytes(jpeg(640, 480, seed=11))
    with ModerationClient(base_url) as client:
        client.banks.create("web-takedowns", "block")
        client.banks.add("web-takedowns", [{"hash": file_hashes(image).pdq, "entry_id": "case-77"}])
        try:
            page.set_input_files("#file", str(image))
            page.wait_for_selector("#preview", state="visible", timeout=10_000)
            for _ in range(20):  # the model replica reads bank changes every 2 s
                page.click("#submit")
                page.wait_for_selector("#status:not(:text('Classifying'))")
                if page.locator("article.card.banks").count():
                    break
                page.wait_for_timeout(500)
            known = page.locator("article.card.banks")
            assert "BLOCK" in known.locator(".badge").inner_text()
            assert "web-takedowns (block): PDQ 0 bits apart · entry case-77" in known.inner_text()
            assert "hash bank: block" in page.locator("#status").inner_text()
        finally:
            client.banks.delete("web-takedowns")


def test_non_image_shows_the_service_error(page, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    page.set_input_files("#file", str(text))
    page.click("#submit")
    page.wait_for_selector("#status.error")
    status = page.locator("#status").inner_text()
    assert "415" in status and "unsupported_media_type" in status
    assert page.locator("article.card").count() == 0


def test_keyboard_reaches_the_file_chooser_and_page_fits_a_phone(page, browser, base_url):
    # Record the file input's activation instead of opening the native dialog (headless
    # Chromium opens at most one per browser, which made the dialog itself a flaky signal).
    page.evaluate("""document.getElementById('file').addEventListener('click', (e) => {
        e.preventDefault(); window.chooserOpened = true; })""")
    page.keyboard.press("Tab")  # the first stop on the page is the link in the header
    for _ in range(5):
        if page.evaluate("document.activeElement.id") == "choose":
            break
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "choose"
    page.keyboard.press("Enter")
    assert page.evaluate("window.chooserOpened === true")
    phone = browser.new_page(viewport={"width": 390, "height": 844})
    phone.goto(base_url + "/")
    phone.wait_for_selector("input[name=classifier]")
    assert phone.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    phone.close()


def test_several_files_are_classified_together_each_in_its_row(page, photo, astronaut, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    page.uncheck("input[value=face_attributes]")
    page.set_input_files("#file", [str(photo), str(broken), str(astronaut)])
    assert "3 images chosen (photo.jpg, broken.jpg, astronaut.jpg)" in page.locator("#drop-text").inner_text()
    assert page.locator("#preview").is_hidden()
    with page.expect_response(lambda r: r.url.endswith("/v1/classify/batch")) as answer:
        page.click("#submit")
    assert answer.value.status == 200
    page.wait_for_selector("table#batch")
    headers = page.locator("table#batch th").all_inner_texts()
    assert headers == ["#", "image", "decision", "nudity", "gore", "offensive"]
    rows = page.locator("table#batch tbody tr")
    assert rows.count() == 3
    assert rows.nth(0).locator("td").nth(1).inner_text() == "photo.jpg"
    assert "unsupported_media_type" in rows.nth(1).inner_text() and "415" in rows.nth(1).inner_text()
    for i in (0, 2):
        decision = rows.nth(i).locator("td").nth(2).inner_text()
        assert decision.startswith(("FLAGGED", "not flagged"))
        label, score = rows.nth(i).locator("td").nth(3).inner_text().rsplit(" ", 1)
        assert label in ("explicit", "suggestive", "none") and 0 <= float(score) <= 1
    assert re.match(r"3 images: \d flagged, 1 error · model ", page.locator("#status").inner_text())
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "web-ui-batch.png"), full_page=True)
    page.set_input_files("#file", str(photo))  # one file again: the single-image view
    page.wait_for_selector("#preview", state="visible", timeout=10_000)
    page.click("#submit")
    page.wait_for_selector("article.card")
    assert page.locator("table#batch").count() == 0


def test_policies_that_held_are_in_the_status_line(page, base_url, tiny_clip_dir, astronaut):
    """Redeploys the app with two policies that hold for any face (the next test redeploys again)."""
    from classifiers.policies import Policy

    policies = (Policy(name="face_seen", action="review", when=[{"min_faces": 1}]),
                Policy(name="face_blocked", action="block", when=[{"min_faces": 1}]))
    serve.run(build_app(AppArgs(model=tiny_clip_dir, policies=policies)), name="moderation", route_prefix="/")
    page.set_input_files("#file", str(astronaut))
    page.wait_for_selector("#preview", state="visible", timeout=10_000)
    page.click("#submit")
    page.wait_for_selector("article.card.faces")
    status = page.locator("#status").inner_text()
    assert status.startswith("Flagged (policy face_seen: review; policy face_blocked: block)"), status
    assert "hash bank" not in status


def test_with_api_keys_the_page_asks_for_one_and_works_with_it(browser, base_url, tiny_clip_dir, photo):
    """Last in the module: redeploys the app with an API key configured."""
    from deployments.auth import hash_key
    from deployments.settings import ApiKey, AuthSettings

    key = "mod_web-test-key"
    auth = AuthSettings(api_keys=(ApiKey(name="web", sha256=hash_key(key)),))
    serve.run(build_app(AppArgs(model=tiny_clip_dir, auth=auth)), name="moderation", route_prefix="/")
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    try:
        page.goto(base_url + "/")  # the page itself is open; the API is not
        page.wait_for_selector("#classifiers .error")
        assert "API key is required" in page.locator("#classifiers").inner_text()
        page.fill("#api-key", "mod_wrong")
        page.set_input_files("#file", str(photo))
        page.fill("#labels", "a cat, a dog")
        page.click("#submit")
        page.wait_for_selector("#status.error")
        assert "401 unauthorized" in page.locator("#status").inner_text()
        page.fill("#api-key", key)
        page.dispatch_event("#api-key", "change")  # a new key reloads the classifier list
        page.wait_for_selector("input[name=classifier]")
        page.click("#submit")
        page.wait_for_selector("article.card")
        assert "model" in page.locator("#status").inner_text()
    finally:
        page.close()

