"""The browser harness itself: a page served on loopback, one image that decodes and one that does not."""

from __future__ import annotations

import base64
import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.browser import image_states, wait_for_decoded_images


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(buffer, format="PNG")
    (tmp_path / "good.png").write_bytes(buffer.getvalue())
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    inline = base64.b64encode(buffer.getvalue()).decode()
    (tmp_path / "index.html").write_text(
        f'<html><body><img id="good" src="good.png"><img id="bad" src="bad.png">'
        f'<img id="inline" src="data:image/png;base64,{inline}"></body></html>'
    )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_the_harness_tells_a_decoded_image_from_a_broken_one(page: Any, site: str, artifacts: Path) -> None:
    page.goto(f"{site}/index.html")
    wait_for_decoded_images(page, "img", 2)
    page.wait_for_function("[...document.images].every(el => el.complete)")
    states = {
        "inline" if s["src"].startswith("data:") else Path(s["src"]).name: s for s in image_states(page)
    }
    assert states["good.png"]["naturalWidth"] == 40
    assert states["inline"]["naturalHeight"] == 30
    assert states["bad.png"]["complete"]
    assert states["bad.png"]["naturalWidth"] == 0
    page.screenshot(path=str(artifacts / "harness.png"))
    assert (artifacts / "harness.png").stat().st_size > 0
