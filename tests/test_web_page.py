"""The chat page in a real browser: Playwright driving Debian's Chromium against a real server.

The server is `create_app` under uvicorn (tests/helpers/server.py) on a tiny model trained
here until greedy decoding (temperature 0, set in the page's settings) says exactly:

- HTML_PROMPT -> HTML_REPLY: markdown and hostile HTML, which the page must show as text;
- CALC_PROMPT -> a calculator call, its result, then CALC_ANSWER;
- LONG_PROMPT -> "la la la ..." without end: a reply long enough to be stopped.

Each prompt is learnt as the first message of a conversation, so each test starts a new chat.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import pytest
import torch

from helpers.server import live_server
from ownllm.chatformat.persona import Persona
from ownllm.chatformat.template import IGNORE_INDEX, ChatTemplate
from ownllm.knowledge.base import KnowledgeBase
from ownllm.model import ModelConfig, Transformer
from ownllm.run.checkpoints import save_checkpoint
from ownllm.run.token_shards import tokenizer_hash
from ownllm.server.settings import ServerSettings
from ownllm.tokenizer import Tokenizer

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed: apt-get install chromium (.ci/run does it)", allow_module_level=True)
expect = sync_api.expect

PERSONA = Persona(name="Pip", description="a test bot")
HTML_PROMPT = "Show me some HTML"
HTML_REPLY = "Here is **bold** and `code`:\n\n- one\n- two\n\n<img src=x onerror=alert(1)> <script>alert(2)</script>"
CALC_PROMPT, CALC_ANSWER = "What is 12 * 7?", "It is 84."
LONG_PROMPT = "Tell me a long story"
HOSTILE = "<img src=x onerror=alert(1)>"
KEY = "page-key-42"


def chat_run(root: Path) -> Path:
    """tokenizer/ (byte-level) and checkpoints/sft/ with a 2 x 64 model that has learnt the replies above."""
    tokenizer = Tokenizer([])
    tokenizer.save(root / "tokenizer")
    template = ChatTemplate(tokenizer)
    system = {"role": "system", "content": PERSONA.system_prompt()}
    conversations = [
        [system, {"role": "user", "content": HTML_PROMPT}, {"role": "assistant", "content": HTML_REPLY}],
        [
            system,
            {"role": "user", "content": CALC_PROMPT},
            {"role": "assistant", "content": "", "tool_call": {"name": "calculator", "arguments": "12 * 7"}},
            {"role": "tool", "content": "84"},
            {"role": "assistant", "content": CALC_ANSWER},
        ],
        [system, {"role": "user", "content": LONG_PROMPT}, {"role": "assistant", "content": "la " * 40}],
    ]
    rows = [template.render(c).training_pair(IGNORE_INDEX) for c in conversations]
    rows[2][1][-1] = IGNORE_INDEX  # the endless reply: its <|end_of_turn|> is never learnt
    width = max(len(inputs) for inputs, _ in rows)
    inputs = torch.tensor([x + [tokenizer.eot_id] * (width - len(x)) for x, _ in rows])
    targets = torch.tensor([y + [IGNORE_INDEX] * (width - len(y)) for _, y in rows])
    torch.manual_seed(0)
    model = Transformer(
        ModelConfig(vocab_size=tokenizer.vocab_size, d_model=64, n_layers=2, n_heads=4, max_seq_len=2048)
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    learned = targets != IGNORE_INDEX
    for step in range(400):
        loss = model(inputs, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # Done when every trained token is the most likely one, with a margin (the loss) so that
        # small numeric differences in the engine cannot flip a greedy choice.
        if step % 5 == 4 and loss.item() < 0.02:
            with torch.no_grad():
                if (model(inputs).argmax(-1) == targets)[learned].all():
                    break
    else:
        raise RuntimeError(f"the test model did not learn its replies (loss {loss.item():.4f})")
    state = {
        "tokenizer_hash": tokenizer_hash(root / "tokenizer"),
        "model_config": model.config.to_dict(),
        "persona": PERSONA.to_dict(),
    }
    save_checkpoint(root / "checkpoints" / "sft", step + 1, model.eval(), None, state)
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield chat_run(tmp_path_factory.mktemp("web"))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def server(run_dir):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with live_server(run_dir, ServerSettings(max_slots=2, max_queue=4)) as live:
            yield live
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield browser
        browser.close()


class Page:
    """A browser tab on the chat page that records dialogs and script errors (there must be none)."""

    def __init__(self, browser, url: str, width: int = 1100, height: int = 760, wait_until_shown: bool = True):
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.tab = self.context.new_page()
        self.tab.set_default_timeout(20_000)
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.tab.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.tab.on("pageerror", lambda e: self.errors.append(str(e)))
        self.tab.goto(url)
        if wait_until_shown:
            expect(self.tab.locator("#messages .empty")).to_be_visible()

    def settings(self, temperature: float = 0, max_tokens: int | None = None) -> None:
        if self.tab.locator("#settings").is_hidden():
            self.tab.click("#toggle-settings")
        self.tab.fill("#temperature", str(temperature))
        if max_tokens is not None:
            self.tab.fill("#max-tokens", str(max_tokens))

    def ask(self, text: str, max_tokens: int | None = None) -> None:
        """Greedy settings, then type the message and press Enter."""
        self.settings(0, max_tokens)
        self.tab.fill("#input", text)
        self.tab.press("#input", "Enter")

    def wait_for_reply(self):
        """The last reply, once it is finished (its thumbs are shown)."""
        reply = self.tab.locator(".message.assistant").last
        expect(reply.locator(".rate-up")).to_be_visible()
        return reply

    def close(self) -> None:
        assert self.errors == [], f"script errors on the page: {self.errors}"
        self.context.close()


@pytest.fixture
def page(browser, server):
    page = Page(browser, server.url)
    yield page
    page.close()


def conversation_id(page: Page) -> str:
    expect(page.tab).to_have_url(re.compile(r"#.+"))
    return page.tab.evaluate("location.hash.slice(1)")


def stored(server, conversation: str) -> dict:
    return server.app.state.store.get_conversation("local", conversation)


MARKDOWN_CASES = [
    ("**b** and *i* and `c`", "<p><strong>b</strong> and <em>i</em> and <code>c</code></p>"),
    ("__b__ _i_ snake_case_name", "<p><strong>b</strong> <em>i</em> snake_case_name</p>"),
    ("<img src=x onerror=alert(1)>", "<p>&lt;img src=x onerror=alert(1)&gt;</p>"),
    ("**<script>alert(1)</script>**", "<p><strong>&lt;script&gt;alert(1)&lt;/script&gt;</strong></p>"),
    ('`<b>` & "quotes"', '<p><code>&lt;b&gt;</code> &amp; "quotes"</p>'),
    (
        "[site](https://example.com/a?b=1)",
        '<p><a href="https://example.com/a?b=1" target="_blank" rel="noopener noreferrer nofollow">site</a></p>',
    ),
    ("[x](javascript:alert(1))", "<p>[x](javascript:alert(1))</p>"),
    ("[x](data:text/html,hi)", "<p>[x](data:text/html,hi)</p>"),
    (
        "see https://example.com.",
        (
            '<p>see <a href="https://example.com" target="_blank" '
            'rel="noopener noreferrer nofollow">https://example.com</a>.</p>'
        ),
    ),
    (
        "```py\nprint('<b>')\n\nx = 1\n```\nafter",
        "<pre><code class=\"language-py\">print('&lt;b&gt;')\n\nx = 1</code></pre><p>after</p>",
    ),
    ("```\nstill streaming <i>", "<pre><code>still streaming &lt;i&gt;</code></pre>"),
    ("- a\n- **b**\n\n1. x\n2. y", "<ul><li>a</li><li><strong>b</strong></li></ul><ol><li>x</li><li>y</li></ol>"),
    ("3. three\n4. four", '<ol start="3"><li>three</li><li>four</li></ol>'),
    ("# Title\n> quoted <u>", "<h3>Title</h3><blockquote>quoted &lt;u&gt;</blockquote>"),
    ("one\ntwo\n\nthree", "<p>one\ntwo</p><p>three</p>"),
    ("2 * 3 * 4 and a_b_c", "<p>2 * 3 * 4 and a_b_c</p>"),
]


def test_markdown_renderer_builds_elements_and_never_parses_text_as_html(page):
    rendered = page.tab.evaluate(
        """async (cases) => {
        const { renderMarkdown } = await import("/static/markdown.js");
        return cases.map((text) => {
            const box = document.createElement("div");
            box.append(renderMarkdown(text));
            return box.innerHTML;
        });
    }""",
        [text for text, _ in MARKDOWN_CASES],
    )
    assert list(zip(rendered, (html for _, html in MARKDOWN_CASES))) == [(h, h) for _, h in MARKDOWN_CASES]
    assert not page.dialogs


def test_a_message_gets_a_streamed_reply_with_a_tool_call_and_is_there_after_a_reload(page, server):
    page.ask(CALC_PROMPT)
    user = page.tab.locator(".message.user .bubble")
    expect(user).to_have_text(CALC_PROMPT)
    reply = page.wait_for_reply()
    expect(reply.locator(".body")).to_have_text(CALC_ANSWER)
    expect(page.tab.locator(".tool")).to_have_text("calculator(12 * 7) → 84")
    conversation = conversation_id(page)
    saved = stored(server, conversation)
    assert [m["role"] for m in saved["messages"]] == ["user", "assistant", "tool", "assistant"]
    assert saved["messages"][-1]["content"] == CALC_ANSWER and saved["settings"]["temperature"] == 0

    page.tab.reload()
    item = page.tab.locator(f'#conversation-list li[data-id="{conversation}"]')
    expect(item).to_have_text(re.compile(re.escape(CALC_PROMPT)))
    expect(item).to_have_class("active")
    expect(page.tab.locator(".message.assistant .body").last).to_have_text(CALC_ANSWER)

    page.tab.goto(server.url)  # no conversation open: find it in the list
    expect(page.tab.locator("#messages .empty")).to_be_visible()
    page.tab.locator(f'#conversation-list li[data-id="{conversation}"] .open').click()
    expect(page.tab.locator(".tool")).to_have_text("calculator(12 * 7) → 84")
    expect(page.tab.locator("#system-prompt")).to_have_value(PERSONA.system_prompt())


def test_stop_ends_a_reply_mid_stream_and_keeps_what_was_written(page, server):
    page.ask(LONG_PROMPT, max_tokens=2000)
    streaming = page.tab.locator('.message.assistant[data-status="streaming"] .body')
    expect(streaming).to_have_text(re.compile(r"(la ){10}"))  # text shows while the reply is being written
    expect(page.tab.locator("#send")).to_be_hidden()
    page.tab.click("#stop")
    expect(page.tab.locator("#send")).to_be_visible()
    reply = page.tab.locator(".message.assistant").last
    expect(reply.locator(".status")).to_have_text("stopped")
    shown = reply.locator(".body").inner_text()
    time.sleep(0.5)
    assert reply.locator(".body").inner_text() == shown, "nothing arrives after stop"

    conversation = conversation_id(page)
    deadline = time.monotonic() + 60
    while stored(server, conversation)["messages"][-1]["status"] != "interrupted":
        assert time.monotonic() < deadline, "the server did not stop the reply"
        time.sleep(0.1)
    saved = stored(server, conversation)["messages"][-1]
    assert saved["content"].startswith("la la") and len(saved["content"]) < 3 * 1900
    while server.app.state.engine.stats()["active"]:
        assert time.monotonic() < deadline, "the generation still runs in the engine"
        time.sleep(0.1)

    page.ask("and then?", max_tokens=20)  # the conversation goes on after a stopped reply
    expect(page.wait_for_reply().locator(".body")).not_to_be_empty()
    assert [m["role"] for m in stored(server, conversation)["messages"]] == ["user", "assistant"] * 2


def test_rating_a_reply_is_stored(page, server):
    page.ask(CALC_PROMPT)
    reply = page.wait_for_reply()
    conversation = conversation_id(page)

    def rating():
        return stored(server, conversation)["messages"][-1]["rating"]

    reply.locator(".rate-up").click()
    expect(page.tab.locator(".message.assistant .rate-up").last).to_have_attribute("aria-pressed", "true")
    assert rating() == "up"
    page.tab.locator(".message.assistant .rate-down").last.click()
    expect(page.tab.locator(".message.assistant .rate-down").last).to_have_attribute("aria-pressed", "true")
    assert rating() == "down"
    comment = page.tab.get_by_label("Comment")
    comment.fill("too short")
    comment.press("Enter")
    expect(page.tab.locator("#notice")).to_have_text("Thanks, comment saved.")
    assert stored(server, conversation)["messages"][-1]["comment"] == "too short"
    page.tab.locator(".message.assistant .rate-down").last.click()  # pressed again: taken back
    expect(page.tab.locator(".message.assistant .rate-down").last).to_have_attribute("aria-pressed", "false")
    assert rating() is None


def test_html_typed_by_the_user_is_shown_as_text(page, server):
    page.ask(HOSTILE, max_tokens=20)
    expect(page.tab.locator(".message.user .bubble")).to_have_text(HOSTILE)
    page.wait_for_reply()
    assert page.tab.locator("#messages img").count() == 0
    page.tab.reload()  # and as it comes back from the server
    expect(page.tab.locator(".message.user .bubble")).to_have_text(HOSTILE)
    assert page.tab.locator("#messages img").count() == 0
    page.tab.locator("#conversation-list .open").first.hover()
    assert page.dialogs == []


def test_html_written_by_the_model_is_escaped_and_markdown_rendered(page, server):
    page.ask(HTML_PROMPT)
    body = page.wait_for_reply().locator(".body")
    expect(body.locator("strong")).to_have_text("bold")
    expect(body.locator("code")).to_have_text("code")
    expect(body.locator("li")).to_have_text(["one", "two"])
    expect(body.locator("p").last).to_have_text("<img src=x onerror=alert(1)> <script>alert(2)</script>")
    assert page.tab.locator("#messages img, #messages script").count() == 0
    assert stored(server, conversation_id(page))["messages"][-1]["content"] == HTML_REPLY
    assert page.dialogs == []


def test_regenerate_and_edit_the_last_message(page, server):
    page.ask(HTML_PROMPT)
    page.wait_for_reply()
    conversation = conversation_id(page)
    page.tab.click(".regenerate")
    expect(page.tab.locator(".message.assistant strong")).to_have_text("bold")
    page.wait_for_reply()
    exported = server.app.state.store.export_conversation("local", conversation)
    replies = [m for m in exported["messages"] if m["role"] == "assistant"]
    assert [m["active"] for m in replies] == [False, True] and replies[0]["content"] == replies[1]["content"]

    page.tab.click(".message.user .edit")
    page.tab.get_by_label("Edit your message").fill(CALC_PROMPT)
    page.tab.click(".resend")
    expect(page.tab.locator(".message.user .bubble")).to_have_text(CALC_PROMPT)
    expect(page.wait_for_reply().locator(".body")).to_have_text(CALC_ANSWER)
    assert [m["content"] for m in stored(server, conversation)["messages"] if m["role"] != "tool"] == [
        CALC_PROMPT,
        "",
        CALC_ANSWER,
    ]


def test_conversations_are_renamed_and_deleted_from_the_list(page, server):
    page.ask(CALC_PROMPT)
    page.wait_for_reply()
    conversation = conversation_id(page)
    item = page.tab.locator(f'#conversation-list li[data-id="{conversation}"]')
    item.locator(".rename").click()
    title = page.tab.get_by_label("New title")
    title.fill("Arithmetic <b>test</b>")
    title.press("Enter")
    expect(item.locator(".open")).to_have_text("Arithmetic <b>test</b>")
    expect(page.tab.locator("#title")).to_have_text("Arithmetic <b>test</b>")
    assert stored(server, conversation)["title"] == "Arithmetic <b>test</b>"

    item.locator(".delete").click()
    expect(item.locator(".delete")).to_have_text("Delete?")  # asks once more, without a dialog
    item.locator(".delete").click()
    expect(item).to_have_count(0)
    expect(page.tab.locator("#messages .empty")).to_be_visible()
    assert stored(server, conversation) is None


def test_about_this_model_shows_the_model_card(page, run_dir):
    page.tab.get_by_role("button", name="About this model").click()
    dialog = page.tab.locator("#about-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#about-body")).to_contain_text("no model card yet: run `ownllm report")
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()
    card = run_dir / "report" / "MODEL_CARD.md"
    card.parent.mkdir()
    table = "| task | value |\n|---|---|\n| piqa | 0.52 |\n| <b>x</b> | 1 |\n"
    card.write_text("# Model card: web\n\nA **test** model. <script>alert(1)</script>\n\n" + table)
    try:
        page.tab.get_by_role("button", name="About this model").click()
        expect(dialog.locator("h3")).to_have_text("Model card: web")  # headings sit two levels down, as in replies
        expect(dialog.locator("strong")).to_have_text("test")
        expect(dialog.locator("#about-body")).to_contain_text("<script>alert(1)</script>")  # shown as text
        assert dialog.locator("script").count() == 0
        expect(dialog.locator("th")).to_have_text(["task", "value"])  # the rule row makes the header
        expect(dialog.locator("td")).to_have_text(["piqa", "0.52", "<b>x</b>", "1"])  # cells are text too
        assert dialog.locator("b").count() == 0
    finally:
        shutil.rmtree(card.parent)


def test_a_narrow_screen_is_usable(browser, server):
    page = Page(browser, server.url, width=360, height=640)
    try:
        tab = page.tab
        expect(tab.locator("#sidebar")).not_to_be_in_viewport()
        for selector in ("#input", "#send", "#open-sidebar", "#toggle-settings"):
            box = tab.locator(selector).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 360, selector
        page.ask(HTML_PROMPT)
        page.wait_for_reply()
        assert tab.evaluate("document.documentElement.scrollWidth") <= 360, "no sideways scrolling"
        tab.click("#open-sidebar")
        expect(tab.locator("#sidebar")).to_be_in_viewport()
        tab.locator("#conversation-list .open").first.click()
        expect(tab.locator("#sidebar")).not_to_be_in_viewport()
    finally:
        page.close()


def test_the_page_asks_for_the_api_key_and_remembers_it(browser, run_dir):
    with live_server(run_dir, ServerSettings(api_key=KEY)) as locked:
        page = Page(browser, locked.url, wait_until_shown=False)  # the page waits for a key
        dialog = page.tab.locator("#key-dialog")
        expect(dialog).to_be_visible()
        page.tab.fill("#key-input", "wrong")
        page.tab.press("#key-input", "Enter")
        expect(page.tab.locator("#key-message")).to_contain_text("refused")
        page.tab.fill("#key-input", KEY)
        page.tab.press("#key-input", "Enter")
        expect(dialog).to_be_hidden()
        expect(page.tab.locator("#model-info")).to_contain_text("Pip")
        assert page.tab.evaluate("localStorage.getItem('ownllm.apiKey')") == KEY
        page.tab.reload()
        expect(page.tab.locator("#model-info")).to_contain_text("Pip")
        expect(dialog).to_be_hidden()
        assert page.dialogs == []  # the key prompt is the page's own dialog element, not a browser prompt
        page.close()


PATHOLOGICAL = ["[" * 16_000, "`" * 16_000, "*" * 16_000, "_" * 16_000, "[a](" * 4_000, "**a" * 5_000, "a_" * 8_000]


def test_markdown_takes_linear_time_on_pathological_text(page):
    """16,000 characters of one markup character (half a link, a code fence opening ...) render in milliseconds."""
    timings = page.tab.evaluate(
        """async (texts) => {
        const { renderMarkdown } = await import("/static/markdown.js");
        return texts.map((text) => {
            const start = performance.now();
            renderMarkdown(text);
            return performance.now() - start;
        });
    }""",
        PATHOLOGICAL,
    )
    assert max(timings) < 50, dict(zip((t[:4] for t in PATHOLOGICAL), timings))


def test_a_malformed_address_still_loads_the_page(browser, server):
    page = Page(browser, server.url + "/#%ZZ")  # decodeURIComponent throws on it
    expect(page.tab.locator("#new-chat")).to_be_visible()
    page.close()  # no script error


NOTE = "The harbour meeting with Grace is on Friday in room 4. <img src=x onerror=alert(1)>"
NOTE_QUESTION = "When is the harbour meeting with Grace?"


def test_a_reply_from_the_knowledge_base_shows_its_sources(browser, run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("assistant.*", "knowledge.*"))
    note = tmp_path / "notes.md"
    note.write_text(NOTE)
    kb = KnowledgeBase.for_run(run)
    kb.add(note)
    kb.close()
    with live_server(run, ServerSettings()) as live:
        page = Page(browser, live.url)
        page.ask(NOTE_QUESTION, max_tokens=8)
        reply = page.wait_for_reply()
        expect(page.tab.locator(".message.user .bubble")).to_have_text(NOTE_QUESTION)  # as typed, not the prompt
        source = reply.locator(".sources details")
        expect(source.locator("summary")).to_have_text("notes.md · passage 1")
        passage = source.locator(".passage")
        expect(passage).to_be_hidden()
        source.locator("summary").click()
        expect(passage).to_have_text(NOTE)  # the document's text as text: no element made of it
        assert page.tab.locator("#messages img").count() == 0
        page.tab.reload()  # kept with the reply
        expect(page.tab.locator(".message.assistant .sources summary")).to_have_text("notes.md · passage 1")
        assert page.dialogs == []
        page.close()


def test_the_memories_panel_lists_adds_and_forgets(page, server):
    store, cat = server.app.state.store, "<b>my cat</b> is called Tom"
    kept = store.remember("local", "the dentist is on Tuesday")
    try:
        page.tab.get_by_role("button", name="Memories").click()
        dialog = page.tab.locator("#memories-dialog")
        expect(dialog).to_be_visible()
        items = dialog.locator("#memory-list .entry-text")
        expect(items).to_have_text(["the dentist is on Tuesday"])
        page.tab.fill("#memory-input", cat)
        page.tab.press("#memory-input", "Enter")
        expect(items).to_have_text(["the dentist is on Tuesday", cat])
        assert dialog.locator("b").count() == 0
        assert [m["text"] for m in store.memories("local")] == [
            "the dentist is on Tuesday",
            "<b>my cat</b> is called Tom",
        ]
        dialog.locator(f'li[data-id="{kept["id"]}"] .forget').click()
        expect(items).to_have_text([cat])
        assert [m["text"] for m in store.memories("local")] == [cat]
        dialog.get_by_role("button", name="Close").click()
        expect(dialog).to_be_hidden()
    finally:
        for memory in store.memories("local"):  # the other tests' prompts are as they were
            store.forget("local", memory["id"])


def test_a_guardrail_finding_shows_on_the_reply_and_in_the_safety_log(page, server):
    page.ask("you ass", max_tokens=8)
    reply = page.wait_for_reply()
    expect(reply.locator(".guardrail-note")).to_have_text("Flagged by the safety check (your message, masked)")
    page.tab.get_by_role("button", name="Safety log").click()
    dialog = page.tab.locator("#safety-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator("#safety-list li").last).to_contain_text("your message, masked: ass")
    dialog.get_by_role("button", name="Close").click()
    expect(dialog).to_be_hidden()
