"""Turn the bytes of one raw document into clean text.

Every document goes through the same steps, in this order:

1. decode UTF-8, replacing (and counting) invalid byte sequences;
2. for HTML, drop the markup and keep the text, with a line break per block element;
3. mojibake repaired: UTF-8 that was once mis-decoded as Windows-1252 ("â€™" for "’");
4. Unicode NFC, so that "é" is one code point however the source spelled it;
5. line breaks unified to "\\n", control characters and invisible marks removed;
6. Project Gutenberg licence header and footer removed;
7. whitespace normalised: odd spaces become " ", runs inside a line collapse to one space,
   trailing spaces go, at most one blank line in a row, no whitespace at either end.

Indentation at the start of a line (after the first) is kept: it carries meaning in verse and code.
"""

from __future__ import annotations

import re
import unicodedata
from html.parser import HTMLParser

REPLACEMENT_CHAR = "\ufffd"

_LINE_BREAKS = re.compile(r"\r\n?|[\x0b\x0c\x85\u2028\u2029]")
# C0 and C1 controls except tab and newline, plus invisible marks that only confuse a tokenizer:
# byte-order mark, zero-width space, soft hyphen, word joiner.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ufeff\u200b\u00ad\u2060]")
# A cheap test that a text needs neither regex above, on its UTF-8 bytes: no byte outside
# printable ASCII, tab, newline and the non-ASCII range; and none of the multi-byte sequences
# that can encode a C1 control, NEL, NBSP (all start with C2), BOM, ZWSP, U+2028/9 or word joiner.
_ORDINARY_BYTES = bytes(range(32, 127)) + b"\t\n" + bytes(range(128, 256))
_SUSPECT_SEQUENCES = (b"\xc2", b"\xef\xbb\xbf", b"\xe2\x80\x8b", b"\xe2\x80\xa8", b"\xe2\x80\xa9", b"\xe2\x81\xa0")
_ODD_SPACE = re.compile(r"[^\S \n]")  # whitespace other than space and newline
_BLANK_LINES = re.compile(r"\n{3,}")
# Text with none of these, no other odd space and no outer whitespace is already normal.
_NOT_NORMAL = ("  ", " \n", "\n\n\n", "\t", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x1f")

# Project Gutenberg wraps every book in a licence. The header ends at a "*** START OF ..." line
# (or, in old files, the end of "THE SMALL PRINT"); the footer begins at "End of [the] Project
# Gutenberg..." or "*** END OF ...", whichever comes first.
_GUTENBERG_START = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*START OF (?:THE|THIS) PROJECT GUTENBERG\b.*|\*END\*THE SMALL PRINT.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^[ \t]*(?:\*{3}[ \t]*END OF (?:THE|THIS) PROJECT GUTENBERG\b|END OF (?:THE )?PROJECT GUTENBERG\b)",
    re.IGNORECASE | re.MULTILINE,
)
# The same markers in raw bytes, for cutting a long file into documents before cleaning (autosplit.py).
GUTENBERG_START_BYTES = re.compile(_GUTENBERG_START.pattern.encode("ascii"), re.IGNORECASE | re.MULTILINE)
GUTENBERG_END_BYTES = re.compile(_GUTENBERG_END.pattern.encode("ascii"), re.IGNORECASE | re.MULTILINE)


# Mojibake: UTF-8 bytes that were once decoded as Windows-1252 (or Latin-1), so "“" (E2 80 9C)
# became "â€œ". A lead byte C2-F4 then reads as one of "Â".."ô", a continuation byte 80-BF as one
# of the characters below (C1 controls where Windows-1252 has no character). A text with no such
# pair cannot hold mojibake: the cheap test that keeps ftfy away from almost every document.
_CONTINUATION_BYTE_CHARS = (
    "\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014"
    "\u2018-\u201a\u201c-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122"
)
_MOJIBAKE_HINT = re.compile(f"[\u00c2-\u00f4][{_CONTINUATION_BYTE_CHARS}]")
# Windows-1252 has no character for byte 9D, so many decoders drop it, and the last byte of "”"
# (E2 80 9D) is lost: "â€" is left, with a space, a line break or the end of the text after it.
# ftfy would read "â€ " as a dagger (E2 80 A0, taking the space for a lost no-break space); giving
# the byte back first makes it a closing quote, by far the likeliest in prose.
_LOST_BYTE_9D = re.compile(f"\u00e2\u20ac(?![{_CONTINUATION_BYTE_CHARS}])")
_RESTORED_9D = "\u00e2\u20ac\x9d"


def repair_mojibake(text: str) -> str:
    """Undo UTF-8 mis-decoded as Windows-1252 ("â€™" -> "’"), line by line; other text is untouched.

    The hint above only finds candidates; ftfy decides whether a line really is mojibake (it
    leaves "Âge tendre" or "São Tomé" alone), and only its encoding repair is used: quotes
    stay curly, ligatures and widths stay as they are. Lines are repaired one at a time, as ftfy's own
    `fix_text` does, so one bad line in a book does not depend on the rest. ftfy is imported
    only when a document needs it, which keeps the workers lean. When nothing needed repair,
    `text` itself (the same object) comes back.
    """
    if text.isascii() or not _MOJIBAKE_HINT.search(text):
        return text
    import ftfy  # lazy: start-up (only a document that needs repair pays for it)

    lines = text.split("\n")
    for i, line in enumerate(lines):
        if _MOJIBAKE_HINT.search(line):
            fixed = ftfy.fix_encoding(_LOST_BYTE_9D.sub(_RESTORED_9D, line))
            # Where ftfy judged the line not to be mojibake after all, take the byte back out.
            lines[i] = fixed.replace(_RESTORED_9D, "\u00e2\u20ac")
    repaired = "\n".join(lines)
    return text if repaired == text else repaired


def decode_utf8(data: bytes) -> tuple[str, int]:
    """Decode UTF-8; return the text and how many invalid byte sequences became U+FFFD."""
    try:
        return data.decode("utf-8"), 0
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        # Each invalid sequence yields one U+FFFD; genuine U+FFFD in the input is EF BF BD.
        return text, text.count(REPLACEMENT_CHAR) - data.count("\ufffd".encode())


def clean_text(text: str) -> str:
    """Steps 4 to 7 above; the result is what the corpus stores."""
    text = unicodedata.normalize("NFC", text)
    data = text.encode("utf-8", "surrogatepass")
    if data.translate(None, _ORDINARY_BYTES) or any(seq in data for seq in _SUSPECT_SEQUENCES):
        text = _LINE_BREAKS.sub("\n", text)
        text = _CONTROL.sub("", text)
    text = strip_gutenberg(text)
    return normalize_whitespace(text)


def normalize_whitespace(text: str) -> str:
    """Collapse spaces inside lines, drop trailing ones, keep indentation, allow one blank line in a row."""
    if text == text.strip() and not any(s in text for s in _NOT_NORMAL):
        if text.isascii() or not _ODD_SPACE.search(text):
            return text  # already normal: the common case, recognised quickly
    return _normalize_lines(text)


def _normalize_lines(text: str) -> str:
    """The general case, line by line with str methods: several times faster than regexes."""
    lines = []
    for line in text.split("\n"):
        words = line.split()  # splits on every Unicode space, so NBSP and friends go too
        if not words:
            lines.append("")
            continue
        indent = line[: len(line) - len(line.lstrip())]
        if indent.strip(" \t"):
            indent = "".join(c if c == "\t" else " " for c in indent)
        lines.append(indent + " ".join(words))
    text = "\n".join(lines).strip()
    if "\n\n\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text


def strip_gutenberg(text: str) -> str:
    """Remove a Project Gutenberg header and footer; text without them comes back unchanged."""
    if "utenberg" not in text and "UTENBERG" not in text:
        return text
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text


def html_to_text(html: str) -> str:
    """The visible text of an HTML page: scripts, styles and tags dropped, blocks on their own lines."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return "".join(parser.parts)


class _TextExtractor(HTMLParser):
    # Elements whose content is never visible text. <head> is skipped too, except its <title>.
    SKIP = frozenset({"script", "style", "noscript", "template", "svg"})
    # Elements that start a new paragraph, and ones that only start a new line.
    PARAGRAPH = frozenset(
        [
            "p",
            "div",
            "section",
            "article",
            "header",
            "footer",
            "main",
            "aside",
            "nav",
            "blockquote",
            "pre",
            "table",
            "ul",
            "ol",
            "dl",
            "h1",
            "h2",
            "h3",
            "h4",
            "h5",
            "h6",
            "figure",
            "form",
            "fieldset",
            "hr",
            "title",
        ]
    )
    LINE = frozenset(["br", "li", "tr", "dt", "dd", "caption"])

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0
        self._pre_depth = 0
        self._in_head = False
        self._in_title = False

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self._skip_depth += 1
        elif tag == "head":
            self._in_head = True
        elif tag == "body":
            self._in_head = False
        elif tag == "title":
            self._in_title = True
        elif tag == "pre":
            self._pre_depth += 1
        self._break(tag, starting=True)

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag == "head":
            self._in_head = False
        elif tag == "title":
            self._in_title = False
        elif tag == "pre":
            self._pre_depth = max(0, self._pre_depth - 1)
        self._break(tag, starting=False)

    def handle_startendtag(self, tag: str, attrs) -> None:
        self._break(tag, starting=True)

    def handle_data(self, data: str) -> None:
        if self._skip_depth or (self._in_head and not self._in_title):
            return
        if not self._pre_depth:
            # Outside <pre>, line breaks and indentation in the source are only wrapping.
            data = _HTML_SPACE_RUN.sub(" ", data)
            if not self.parts or self.parts[-1].endswith("\n"):
                data = data.lstrip(" ")
        if data:
            self.parts.append(data)

    def _break(self, tag: str, starting: bool) -> None:
        if tag in self.PARAGRAPH:
            self.parts.append("\n\n")
        elif tag in self.LINE and starting:  # <li>a</li><li>b</li>: one line break between items
            self.parts.append("\n")


_HTML_SPACE_RUN = re.compile(r"\s+")
