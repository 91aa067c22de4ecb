"""Take docs/screenshot-chat.png: the real chat page, served by ownllm, with real replies from a run's model.

    .venv/bin/python scripts/screenshot_chat.py --run runs/demo --prompt "Hello" --prompt "What is 12 * 7?"

The server is the app `ownllm serve` runs (create_app under uvicorn, on a free loopback port,
with an assistant.db of its own in a temporary copy of the run's database-free files); the
browser is Debian's Chromium driven by Playwright, as in tests/test_web_page.py. Each prompt is
sent in the same conversation (or each in a new one: --new-chat) and its reply streamed to the
end before the next one.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import expect, sync_playwright

from ownllm.server.app import create_app
from ownllm.server.settings import ServerSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"))
    parser.add_argument("--prompt", action="append", required=True, help="a message to send; repeatable")
    parser.add_argument("--out", type=Path, default=Path("docs/screenshot-chat.png"))
    parser.add_argument(
        "--new-chat",
        action="store_true",
        help="send each prompt in a new conversation (the screenshot shows the last one)",
    )
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--max-tokens", type=int, default=120)
    parser.add_argument("--width", type=int, default=1100)
    parser.add_argument("--height", type=int, default=700)
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / args.run.resolve().name  # the page shows the run's name as the model's
        shutil.copytree(args.run / "tokenizer", run / "tokenizer")
        shutil.copytree(args.run / "checkpoints", run / "checkpoints")
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        settings = ServerSettings(port=sock.getsockname()[1])
        app = create_app(run, dataclasses.replace(settings))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        while not (server.started and app.state.ready.is_set()):
            time.sleep(0.05)
        if app.state.load_error:
            raise SystemExit(f"error: {app.state.load_error}")
        try:
            shoot(f"http://127.0.0.1:{settings.port}", args)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    print(f"wrote {args.out}")


def shoot(url: str, args: argparse.Namespace) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True)
        page = browser.new_page(viewport={"width": args.width, "height": args.height}, device_scale_factor=1)
        page.set_default_timeout(120_000)
        page.goto(url)
        page.click("#toggle-settings")
        page.fill("#temperature", str(args.temperature))
        page.fill("#max-tokens", str(args.max_tokens))
        page.click("#toggle-settings")
        for n, prompt in enumerate(args.prompt, start=1):
            if args.new_chat and n > 1:
                page.click("#new-chat")
            page.fill("#input", prompt)
            page.press("#input", "Enter")
            expect(page.locator(".message.user")).to_have_count(1 if args.new_chat else n)
            expect(page.locator('.message[data-status="streaming"]')).to_have_count(0)  # the reply has finished
        page.locator(".message.assistant .rate-up").first.click()  # show a rated reply
        args.out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(args.out))
        browser.close()


if __name__ == "__main__":
    main()
