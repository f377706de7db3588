"""Token-aware chunking that keeps to paragraphs and headings.

Sizes are counted with the embedding model's tokenizer, so no chunk is cut short by the embedder's
window (256 word pieces for all-MiniLM-L6-v2, part of it left for the title line each chunk is
embedded with). A chunk never spans two headings; it ends at a paragraph or sentence boundary, and
the next chunk repeats the last sentences of the previous one (``overlap`` tokens) so a fact cut at
the boundary is still whole in one of them. Each chunk keeps its character range in the document
text, its heading and its page for citations; a chunk never spans two pages either, so the page
it cites is the page its text is on.
"""

from __future__ import annotations

import hashlib
import re

from pydantic import BaseModel
from slmflow.tools.rag.loaders import Document

SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9])")


class Chunk(BaseModel):
    id: str
    path: str
    title: str
    heading: str
    page: int | None
    start: int
    end: int
    text: str

    def embedding_text(self) -> str:
        """What the embedder and BM25 see: the chunk with the title and heading it sits under, so a
        passage that says "he" still matches a question naming its subject."""
        head = self.title if not self.heading or self.heading == self.title else f"{self.title} — {self.heading}"
        return f"{head}\n{self.text}"

    def citation(self) -> str:
        where = place_label(self.page, self.heading)
        return f"{self.path}, {where}" if where else self.path


def place_label(page: int | None, heading: str) -> str:
    """Where in a document a citation points: "page N" (a PDF), "§ heading", or nothing."""
    return f"page {page}" if page is not None else (f"§ {heading}" if heading else "")


def _units(doc: Document) -> list[tuple[int, int, int]]:
    """(start, end, section) of each paragraph, split further into sentences."""
    return [(section.start + a, section.start + b, index) for index, section in enumerate(doc.sections)
            for a, b in split_sentences(doc.text[section.start:section.end])]


# A run of lines that hard-wrapped prose makes: the next line goes on in lower case ("a waggle\n
# dance tells"), or the line is long (60+ characters) and ends without a full stop, colon or
# semicolon ("the 1889 World's\nFair."). Short lines starting with a capital or a digit start
# anew, so the rows of a table, list items and headings stay apart.
_PARAGRAPH = re.compile(r"[^\n]+(?:(?:\n(?=[a-z])|(?<=[^\n]{60})(?<![.!?:;])\n)[^\n]+)*")


def split_sentences(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text``, surrounding whitespace left out. A line break is
    a boundary too, unless it wraps prose (``_PARAGRAPH``: the next line goes on in lower case, or
    a long line ends without closing punctuation)."""
    spans = []
    for para in _PARAGRAPH.finditer(text):
        cuts = [0, *(m.end() for m in SENTENCE_END.finditer(para.group())), len(para.group())]
        for a, b in zip(cuts, cuts[1:], strict=False):
            piece = para.group()[a:b]
            body = piece.strip()
            if body:
                start = para.start() + a + len(piece) - len(piece.lstrip())
                spans.append((start, start + len(body)))
    return spans


def chunk_document(doc: Document, tokenizer, max_tokens: int = 200, overlap: int = 32) -> list[Chunk]:
    """The chunks of ``doc``; ``tokenizer`` is a Hugging Face fast tokenizer (the embedder's)."""
    units = _units(doc)
    if not units:
        return []
    encoded = tokenizer([doc.text[a:b] for a, b, _ in units], add_special_tokens=False,
                        return_offsets_mapping=True, verbose=False)
    pieces: list[tuple[int, int, int, int]] = []  # start, end, section, tokens
    for (a, _b, sec), offsets in zip(units, encoded["offset_mapping"], strict=True):
        # A sentence longer than a chunk is cut at token boundaries.
        for i in range(0, len(offsets), max_tokens):
            window = offsets[i:i + max_tokens]
            if window:
                pieces.append((a + window[0][0], a + window[-1][1], sec, len(window)))

    chunks: list[tuple[int, int, int]] = []  # first piece, last piece (inclusive), section
    first, total = 0, 0
    for i, (_, _, sec, n) in enumerate(pieces):
        new_heading = _place(doc, sec) != _place(doc, pieces[first][2])
        if i > first and (new_heading or total + n > max_tokens):
            chunks.append((first, i - 1, pieces[first][2]))
            back, carried = i, 0
            while not new_heading and back - 1 > first and carried + pieces[back - 1][3] <= overlap:
                back -= 1
                carried += pieces[back][3]
            first, total = back, carried
        total += n
    chunks.append((first, len(pieces) - 1, pieces[first][2]))

    key = hashlib.sha1(doc.path.encode()).hexdigest()[:16]
    out = []
    for number, (a, b, sec) in enumerate(chunks):
        start, end = pieces[a][0], pieces[b][1]
        section = doc.sections[sec]
        out.append(Chunk(id=f"{key}-{number}", path=doc.path, title=doc.title, heading=section.heading,
                         page=section.page, start=start, end=end, text=doc.text[start:end]))
    return out


def _place(doc: Document, section: int) -> tuple[str, int | None]:
    """What a chunk may not span: its heading, and its page, so a page citation is exact."""
    return doc.sections[section].heading, doc.sections[section].page
