"""PDFs written by hand for the document-reading tests (no PDF library here writes text): a real one
and hostile ones. This module holds no tests itself.

    minimal_pdf("The vault code is 4417.")                 one page showing the text
    pdf_pages(content, pages=40, flate=True)              `pages` pages, each with `content` as its
                                                          (FlateDecode-compressed) content stream
"""

from __future__ import annotations

import zlib


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF whose page shows `text` in Helvetica."""
    return pdf_pages(f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode())


def pdf_pages(content: bytes, pages: int = 1, flate: bool = False) -> bytes:
    """Pages sharing one font, each with its own copy of the content stream (a bomb when `content` is
    megabytes of spaces: zlib shrinks 10 MB of them to 10 KB)."""
    stream = zlib.compress(content, 9) if flate else content
    stream_head = b"<< /Length %d%s >>\nstream\n" % (len(stream), b" /Filter /FlateDecode" if flate else b"")
    kids = b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for i in range(pages):
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 3 0 R >> >> >>" % (5 + 2 * i)
        )
        objects.append(stream_head + stream + b"\nendstream")
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    return out + b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
