"""Job data reaches the page as text: markup in arguments, errors and names stays inert."""

from __future__ import annotations

import durable_jobs as jobs

from .helpers import Made, TestClient

ESCAPED_SCRIPT = "&lt;script&gt;window.pwned = 1&lt;/script&gt;"


def test_script_in_arguments_renders_inert(client: TestClient, made: Made) -> None:
    for path in (f"/jobs/{made.completed}", f"/jobs/{made.completed}?fragment=1"):
        html = client.get(path).text
        assert "<script>window.pwned" not in html
        assert ESCAPED_SCRIPT in html  # in the arguments and in the result
        assert "a &amp; b \\&#34;quoted\\&#34; &#39;single&#39;" in html
    # The dashboard's own script is the only one on the page, loaded from its file.
    assert html.count("<script") == 0
    assert client.get(f"/jobs/{made.completed}").text.count("<script") == 1


def test_markup_in_errors_and_names_renders_inert(
    queue: jobs.Queue, client: TestClient, made: Made
) -> None:
    listing = client.get("/jobs?status=failed").text
    failed = client.get(f"/jobs/{made.failed}").text
    for html in (listing, failed):
        assert "<img" not in html
        assert "kaboom &lt;img src=x onerror=&#34;window.pwned = 2&#34;&gt;" in html
    odd = queue.enqueue("<b>odd</b>", queue="<i>q</i>")
    for html in (client.get("/jobs").text, client.get(f"/jobs/{odd}").text, client.get("/").text):
        assert "<b>odd" not in html and "<i>q" not in html
        assert "&lt;i&gt;q&lt;/i&gt;" in html
    searched = client.get("/jobs", params={"id": '"><script>alert(1)</script>'}).text
    assert "<script>alert" not in searched and "&lt;script&gt;alert(1)" in searched


def test_every_response_forbids_inline_script(client: TestClient, made: Made) -> None:
    for path in ("/", "/jobs", f"/jobs/{made.completed}", "/static/dashboard.js", "/nope"):
        headers = client.get(path).headers
        policy = headers["content-security-policy"]
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert headers["x-content-type-options"] == "nosniff"
