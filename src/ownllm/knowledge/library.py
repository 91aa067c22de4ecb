"""Knowledge bases per owner for the server: each API key's own documents, beside the run's shared ones.

    library = Library(run_dir / "knowledge", shared=lambda: run_kb)   # run_kb: the run's KnowledgeBase, or None
    library.add(owner, "notes.md", data)        # ("added" | "replaced" | "unchanged", chunks)
    library.documents(owner)                    # the owner's documents, then the shared ones
    library.search(owner, "when is the meeting", k=5)   # [Passage(hit, shared, score), ...]
    library.remove(owner, "notes.md")           # False when the owner has no such document
    library.for_owner(owner).search(query, k)   # [Hit, ...]: what assistant.knowledge.augment reads

Layout: the run's `knowledge.db` (filled by `ownllm kb add`, the operator's) is shared, read
by every owner, written by none through here. An owner's own documents live in

    DIR/knowledge/<owner>/knowledge.db        a KnowledgeBase like the run's (same schema)
    DIR/knowledge/<owner>/files/<name>.txt    the text each document was indexed from

where <owner> is the owner id made a file name (`owner_dir`): "local", "hmac-<32 hex>" for
the server's keyed ids, else a SHA-256 of the id. Folders are 0700. What is kept of an upload
is its extracted text, not its bytes: that is what the knowledge base indexes (`KnowledgeBase.add`
reads it from that file, and names the document by it), what a re-index or a new embedder needs,
and it cannot hold a PDF's scripts or a bomb. A document's name is a plain file name (`check_name`),
never a path, so no name reaches outside its owner's folder.

Adding is all or nothing: the text is read and checked first (parse_document, with the caller's
limits; an empty text is refused), then, under the owner's lock, the new text file takes the
old one's place and the knowledge base adds it in one transaction; if that fails the old file
is put back, so the owner's documents are exactly as before. At most `max_documents` per owner.

Knowledge bases are opened when first needed, kept open (at most `max_open`, least recently
used closed first, never one in use), and closed by close(). An owner without documents has
no folder: searching it opens nothing.

Searching an owner searches both knowledge bases and merges them by reciprocal rank fusion
(score = 1 / (RRF_K + rank) in its own list; Cormack et al. 2009), not by their scores: BM25
weighs a word by how rare it is in *its* table, so the same passage scores differently in a
ten-document personal base and a thousand-document shared one, and the two numbers do not
compare. Fusing ranks needs no common scale (nor does it care if either base ranks by
embeddings). With two disjoint lists it interleaves them by rank; at equal rank the owner's own
passage comes first, as what a person uploaded is likelier to be what they ask about.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from ownllm.core.errors import UserError
from ownllm.knowledge.base import DB_NAME, Hit, KnowledgeBase
from ownllm.knowledge.documents import ReadLimits, UnreadableDocument, check_suffix, parse_document

FOLDER = "knowledge"  # DIR/knowledge/: the owners' knowledge bases
RRF_K = 60
MAX_OPEN = 16
MAX_DOCUMENTS = 100
MAX_NAME_BYTES = 200  # the stored file adds ".txt"; file systems allow 255 bytes
TEXT_SUFFIX = ".txt"
_HMAC_OWNER = re.compile(r"hmac:([0-9a-f]{32})")
_FORBIDDEN = set('/\\:*?"<>|')  # separators, and what Windows refuses in a file name


class BadName(UserError):
    """A document name that is not a plain file name."""


class DocumentLimit(UserError):
    """The owner already has max_documents documents."""


def owner_dir(owner: str) -> str:
    """A file name for an owner id, one per id: "local", "hmac-<hex>" (the server's ids), else sha256-<hex>."""
    if owner == "local":
        return owner
    match = _HMAC_OWNER.fullmatch(owner)
    if match:
        return f"hmac-{match.group(1)}"
    return "sha256-" + hashlib.sha256(owner.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def check_name(name: str) -> str:
    """A document name: a plain file name of a type ownllm reads; BadName (or UnsupportedDocument) if not."""
    if not name or not name.strip():
        raise BadName("the document needs a name, such as notes.md")
    if any(c in _FORBIDDEN for c in name) or ".." in name or name.startswith("."):
        raise BadName(f"{name!r} is not a plain file name: no /, \\, '..', leading '.' or any of :*?\"<>|")
    if not name.isprintable() or name != name.strip():
        raise BadName(f"{name!r} has control characters or white space at its ends")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadName(f"{name!r} has half of a character (a lone surrogate)") from None
    if size > MAX_NAME_BYTES:
        raise BadName(f"the name is {size} bytes long; at most {MAX_NAME_BYTES}")
    check_suffix(name)
    return name


@dataclass(frozen=True)
class Passage:
    hit: Hit  # hit.path: the document's name for the owner's own, its path for a shared one
    shared: bool
    score: float  # the fused score (reciprocal rank), higher is better; hit.score is its own base's


@dataclass
class _Open:
    kb: KnowledgeBase
    users: int = 0
    writing: threading.Lock = field(default_factory=threading.Lock)


class Library:
    def __init__(
        self,
        root: str | Path,
        shared: Callable[[], KnowledgeBase | None] = lambda: None,
        max_documents: int = MAX_DOCUMENTS,
        max_open: int = MAX_OPEN,
        open_kb: Callable[[Path], KnowledgeBase] = KnowledgeBase,
    ):
        self.root, self.shared = Path(root), shared  # asked each time: the server's may be swapped or removed
        self.max_documents, self.max_open, self._open_kb = max_documents, max(1, max_open), open_kb
        self._lock = threading.Lock()
        self._open: OrderedDict[str, _Open] = OrderedDict()
        self._closed = False

    # -- the owner's own knowledge base --------------------------------------------------------------------

    def folder(self, owner: str) -> Path:
        return self.root / owner_dir(owner)

    def _file(self, owner: str, name: str) -> Path:
        return self.folder(owner) / "files" / (name + TEXT_SUFFIX)

    @contextmanager
    def _own(self, owner: str, create: bool = False) -> Iterator[_Open | None]:
        """The owner's open knowledge base, held open while in use; None when it has none (and not create)."""
        folder = self.folder(owner)
        with self._lock:
            if self._closed:
                raise RuntimeError("the library is closed")
            entry = self._open.get(owner)
            if entry is None and (create or (folder / DB_NAME).is_file()):
                self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
                for part in (folder, folder / "files"):
                    part.mkdir(mode=0o700, exist_ok=True)
                for leftover in (folder / "files").glob(".*"):  # a crash mid-add left it
                    leftover.unlink(missing_ok=True)
                entry = self._open[owner] = _Open(self._open_kb(folder / DB_NAME))
            if entry is not None:
                self._open.move_to_end(owner)
                entry.users += 1
                self._evict()
        try:
            yield entry
        finally:
            if entry is not None:
                with self._lock:
                    entry.users -= 1
                    self._evict()

    def _evict(self) -> None:
        """Close the least recently used idle knowledge bases past max_open (with self._lock held)."""
        for owner in list(self._open):
            if len(self._open) <= self.max_open:
                return
            if self._open[owner].users == 0:
                self._open.pop(owner).kb.close()

    def open_count(self) -> int:
        with self._lock:
            return len(self._open)

    def add(self, owner: str, name: str, data: bytes, limits: ReadLimits | None = None) -> tuple[str, int]:
        """Add or refresh one of the owner's documents from its bytes; (what happened, its number of chunks)."""
        check_name(name)
        text = parse_document(data, name, limits or ReadLimits()).encode("utf-8", "replace").decode("utf-8")
        if not text.strip():
            raise UnreadableDocument(f"{name} holds no text")
        with self._own(owner, create=True) as entry:
            assert entry is not None
            with entry.writing:
                stored = self._stored(entry.kb)
                if name not in stored and len(stored) >= self.max_documents:
                    raise DocumentLimit(f"this key has {len(stored)} documents, the most it may keep; delete one first")
                target = self._file(owner, name)
                status, chunks = self._replace(entry.kb, target, text)
                # Stored under another path (the run directory was moved since): that entry goes now.
                stale = [path for path in stored.get(name, []) if path != str(target.resolve())]
                for path in stale:
                    entry.kb.remove(path)
                return ("replaced" if stale else status), chunks

    @staticmethod
    def _replace(kb: KnowledgeBase, target: Path, text: str) -> tuple[str, int]:
        """The text in target's place and in the knowledge base, or neither (the old file put back)."""
        token = secrets.token_hex(8)
        incoming, previous = target.with_name(f".in-{token}.txt"), target.with_name(f".old-{token}.txt")
        incoming.write_text(text, encoding="utf-8")
        had = target.exists()
        try:
            if had:
                os.replace(target, previous)
            os.replace(incoming, target)
            try:
                return kb.add(target)
            except BaseException:
                if had:
                    os.replace(previous, target)
                else:
                    target.unlink(missing_ok=True)
                raise
        finally:
            incoming.unlink(missing_ok=True)
            previous.unlink(missing_ok=True)

    def remove(self, owner: str, name: str) -> bool:
        """Delete one of the owner's documents (and its text); False when the owner has none of that name."""
        check_name(name)
        with self._own(owner) as entry:
            if entry is None:
                return False
            with entry.writing:
                paths = self._stored(entry.kb).get(name, [])
                for path in paths:
                    entry.kb.remove(path)
                self._file(owner, name).unlink(missing_ok=True)
                return bool(paths)

    @classmethod
    def _stored(cls, kb: KnowledgeBase) -> dict[str, list[str]]:
        """Document name -> the path(s) the knowledge base holds it under."""
        stored: dict[str, list[str]] = {}
        for document in kb.documents():
            stored.setdefault(cls._name(document["path"]), []).append(document["path"])
        return stored

    @staticmethod
    def _name(path: str) -> str:
        return Path(path).name.removesuffix(TEXT_SUFFIX)

    # -- what an owner sees: their own, then the shared -------------------------------------------------------

    def documents(self, owner: str) -> list[dict]:
        """{name, chars, chunks, added, shared} for each of the owner's documents, then each shared one."""
        with self._own(owner) as entry:
            own = entry.kb.documents() if entry is not None else []
        shared_kb = self.shared()
        shared = shared_kb.documents() if shared_kb is not None else []
        return [{**d, "name": self._name(d["path"]), "shared": False} for d in own] + [
            {**d, "name": Path(d["path"]).name, "shared": True} for d in shared
        ]

    def search(self, owner: str, query: str, k: int = 5) -> list[Passage]:
        """The k passages of the owner's and the shared knowledge base that match best, fused by rank."""
        if k < 1:
            return []
        with self._own(owner) as entry:
            own = entry.kb.search(query, k) if entry is not None else []
        shared_kb = self.shared()
        shared = shared_kb.search(query, k) if shared_kb is not None else []
        ranked = [
            (1.0 / (RRF_K + rank), is_shared, hit)
            for is_shared, hits in ((False, own), (True, shared))
            for rank, hit in enumerate(hits, 1)
        ]
        ranked.sort(key=lambda item: (-item[0], item[1]))  # at equal rank, the owner's own first
        return [
            Passage(hit if is_shared else replace(hit, path=self._name(hit.path)), is_shared, score)
            for score, is_shared, hit in ranked[:k]
        ]

    def for_owner(self, owner: str) -> OwnerKnowledge:
        return OwnerKnowledge(self, owner)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            while self._open:
                self._open.popitem()[1].kb.close()


@dataclass(frozen=True)
class OwnerKnowledge:
    """What one owner may search, in the shape assistant.knowledge.augment reads: search(query, k) -> [Hit]."""

    library: Library
    owner: str

    def search(self, query: str, k: int = 5) -> list[Hit]:
        return [replace(p.hit, score=p.score) for p in self.library.search(self.owner, query, k)]
