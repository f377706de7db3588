"""Turning files into text with structure: each document is its text plus sections that say which
heading or page every character range belongs to, so a chunk can cite "file, page 3" or
"file, § History".

One loader per kind of file. Files of an unknown suffix are read as text when they are UTF-8
without NUL bytes, and skipped as binary otherwise. A file that cannot be read raises
:class:`LoadError` naming it; the indexer records the warning and goes on with the others.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import BaseModel

MAX_FILE_BYTES = 50_000_000
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class LoadError(Exception):
    """A file that is skipped, with the reason a user can act on."""


class Section(BaseModel):
    """The character range ``[start, end)`` of the document text under one heading or on one page."""

    start: int
    end: int
    heading: str = ""
    page: int | None = None


class Document(BaseModel):
    path: str
    title: str
    text: str
    sections: list[Section]
    notes: list[str] = []  # what the user should know about how the file was read


class _Builder:
    """Appends text blocks and records the section each belongs to."""

    def __init__(self, notes: list[str] | None = None) -> None:
        self.notes = notes or []
        self.parts: list[str] = []
        self.sections: list[Section] = []
        self.length = 0

    def add(self, text: str, heading: str = "", page: int | None = None) -> None:
        text = clean_text(text)
        if not text:
            return
        if self.parts:
            self.parts.append("\n\n")
            self.length += 2
        self.sections.append(Section(start=self.length, end=self.length + len(text), heading=heading, page=page))
        self.parts.append(text)
        self.length += len(text)

    def document(self, path: Path, title: str) -> Document:
        return Document(path=str(path), title=title, text="".join(self.parts), sections=self.sections,
                        notes=self.notes)


def clean_text(text: str) -> str:
    """Normalised whitespace that keeps paragraph breaks (a blank line) and drops control characters."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
    text = re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", "", text)
    text = re.sub(r"[ \t]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _read_text(path: Path) -> tuple[str, list[str]]:
    """The text and, for a file that is not UTF-8, a note saying how it was read: Windows-1252
    (the usual legacy encoding of Western text) when it decodes as such, else Latin-1."""
    data = path.read_bytes()
    if b"\x00" in data[:8192]:
        raise LoadError("binary file (NUL bytes), skipped")
    try:
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as err:
        position = err.start
    try:
        text, encoding = data.decode("cp1252"), "Windows-1252"
    except UnicodeDecodeError:
        text, encoding = data.decode("latin-1"), "Latin-1"
    return text, [f"not UTF-8 (byte {position}); read as {encoding} — save it as UTF-8 if characters look wrong"]


def _first_line(text: str, fallback: str) -> str:
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line[:200] if line else fallback


def load_text(path: Path) -> Document:
    text, notes = _read_text(path)
    builder = _Builder(notes)
    builder.add(text)
    return builder.document(path, _first_line(text, path.stem))


_MD_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
_RST_HEADING = re.compile(r"^(?P<title>[^\n]+)\n(?P<rule>[=\-~^\"'`#*+]{3,})\s*$", re.M)


def _split_by_headings(text: str, pattern: re.Pattern, title_group: str | int) -> list[tuple[str, str]]:
    """(heading, body) pairs; the text before the first heading has an empty heading."""
    pieces, last, heading = [], 0, ""
    for match in pattern.finditer(text):
        pieces.append((heading, text[last:match.start()]))
        heading, last = match.group(title_group).strip(), match.end()
    pieces.append((heading, text[last:]))
    return pieces


def load_markup(path: Path) -> Document:
    """Markdown and reStructuredText: sections follow their headings."""
    text, notes = _read_text(path)
    pattern, group = (_RST_HEADING, "title") if path.suffix.lower() == ".rst" else (_MD_HEADING, 2)
    builder = _Builder(notes)
    for heading, body in _split_by_headings(text, pattern, group):
        builder.add((heading + "\n" if heading else "") + body, heading=heading)
    headings = [s.heading for s in builder.sections if s.heading]
    return builder.document(path, headings[0] if headings else _first_line(text, path.stem))


_BLOCK_TAGS = ["p", "div", "li", "tr", "td", "th", "dd", "dt", "pre", "blockquote", "table", "ul", "ol",
               "section", "article", "header"]
_HEADING_MARK = "\u0001"


def load_html(path: Path) -> Document:
    """Text in reading order; h1-h4 start sections. Block tags and <br> become line breaks, inline
    tags (links, emphasis) stay inside their sentence."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(path.read_bytes(), "lxml")
    for tag in soup(["script", "style", "noscript", "nav", "footer", "head"]):
        tag.decompose()
    title_tag = BeautifulSoup(path.read_bytes(), "lxml").title
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for tag in soup.find_all(["h1", "h2", "h3", "h4"]):
        tag.replace_with(f"\n{_HEADING_MARK}{tag.get_text(' ', strip=True)}\n")
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_after("\n")
    builder = _Builder()
    heading = ""
    for block in re.split(f"\n(?={_HEADING_MARK})", soup.get_text()):
        if block.startswith(_HEADING_MARK):
            heading = block[1:].split("\n", 1)[0].strip()
            block = block[1:]
        builder.add(block, heading=heading)
    title = title_tag.get_text(" ", strip=True) if title_tag else ""
    return builder.document(path, title or next((s.heading for s in builder.sections if s.heading), path.stem))


class _Collected(logging.Handler):
    """Records a library logs while it reads one file, kept for one note instead of the terminal."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _collected_warnings(logger_name: str) -> Iterator[_Collected]:
    logger = logging.getLogger(logger_name)
    handler, propagate = _Collected(), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def load_pdf(path: Path, ocr: Callable[[bytes], str] | None = None,
             on_page: Callable[[int, int], None] | None = None) -> Document:
    """Text per page; a page without a text layer goes through OCR of its embedded images.
    ``on_page(done, pages)`` is told after each page (a 300-page filing takes a minute). What pypdf
    warns about a damaged file becomes one note on the document, not lines in the user's terminal."""
    with _collected_warnings("pypdf") as warned:
        builder, title = _read_pdf(path, ocr, on_page)
    if warned.messages:
        builder.notes.append(f"the PDF is damaged in places ({len(warned.messages)} pypdf warnings, first: "
                             f"{warned.messages[0][:120]}); some text may be missing")
    return builder.document(path, title)


def _read_pdf(path: Path, ocr: Callable[[bytes], str] | None,
              on_page: Callable[[int, int], None] | None) -> tuple[_Builder, str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        pages = list(reader.pages)
    except (PdfReadError, ValueError, OSError) as err:
        raise LoadError(f"unreadable PDF ({err})") from None
    builder, no_text = _Builder(), 0
    for number, page in enumerate(pages, start=1):
        text = _page_text(page)
        if not text.strip() and ocr is not None:
            text = "\n".join(ocr(image.data) for image in page.images)
        if not text.strip():
            no_text += 1
        builder.add(text, page=number)
        if on_page is not None:
            on_page(number, len(pages))
    if no_text == len(pages):
        raise LoadError("PDF has no text layer and OCR found no text in its pages")
    title = (reader.metadata.title if reader.metadata and reader.metadata.title else "") or path.stem
    return builder, title


def _page_text(page) -> str:
    """A page's text in reading order. pypdf's layout mode places text by its position on the
    page, so a table written column by column (as some generators do) still reads row by row;
    plain mode, which follows the content stream, is the fallback for pages layout mode fails on."""
    try:
        return page.extract_text(extraction_mode="layout", layout_mode_space_vertically=False) or ""
    except Exception:  # layout mode is newer and fails on some fonts; plain mode reads them
        return page.extract_text() or ""


def load_docx(path: Path) -> Document:
    import docx

    try:
        doc = docx.Document(str(path))
    except Exception as err:  # python-docx raises several unrelated types for broken files
        raise LoadError(f"unreadable .docx ({err})") from None
    builder, heading, block = _Builder(), "", []
    for para in doc.paragraphs:
        if para.style is not None and para.style.name.lower().startswith(("heading", "title")):
            builder.add("\n".join(block), heading=heading)
            heading, block = para.text.strip(), [para.text]
        else:
            block.append(para.text)
    builder.add("\n".join(block), heading=heading)
    return builder.document(path, next((s.heading for s in builder.sections if s.heading), path.stem))


def load_csv(path: Path) -> Document:
    """One line of ``column: value`` pairs per row, so a chunk of rows reads as records."""
    text, notes = _read_text(path)
    rows = list(csv.reader(io.StringIO(text)))
    builder = _Builder(notes)
    if rows:
        header, body = rows[0], rows[1:]
        builder.add("\n".join("; ".join(f"{h}: {v}" for h, v in zip(header, row, strict=False)) for row in body))
    return builder.document(path, path.stem)


def load_json(path: Path) -> Document:
    try:
        text, notes = _read_text(path)
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise LoadError(f"invalid JSON at line {err.lineno}: {err.msg}") from None
    builder = _Builder(notes)
    builder.add(json.dumps(data, indent=1, ensure_ascii=False))
    return builder.document(path, path.stem)


def load_image(path: Path, ocr: Callable[[bytes], str] | None) -> Document:
    if ocr is None:
        raise LoadError("image skipped: OCR is off")
    builder = _Builder()
    builder.add(ocr(path.read_bytes()))
    if not builder.sections:
        raise LoadError("OCR found no text in the image")
    return builder.document(path, path.stem)


LOADERS: dict[str, Callable[[Path], Document]] = {
    ".txt": load_text, ".md": load_markup, ".markdown": load_markup, ".rst": load_markup,
    ".html": load_html, ".htm": load_html, ".docx": load_docx, ".csv": load_csv, ".json": load_json,
}


def load_document(path: Path, ocr: Callable[[bytes], str] | None = None,
                  on_page: Callable[[int, int], None] | None = None) -> Document:
    """The document in ``path``, or :class:`LoadError` saying why it is skipped; ``on_page`` hears
    of each page of a PDF read."""
    try:
        size = path.stat().st_size
    except OSError as err:
        raise LoadError(f"unreadable ({err.strerror})") from None
    if size > MAX_FILE_BYTES:
        raise LoadError(f"{size / 1e6:.0f} MB is over the {MAX_FILE_BYTES / 1e6:.0f} MB limit per file; split it")
    suffix = path.suffix.lower()
    try:
        if suffix == ".pdf":
            return load_pdf(path, ocr, on_page)
        if suffix in IMAGE_SUFFIXES:
            return load_image(path, ocr)
        return LOADERS.get(suffix, load_text)(path)
    except PermissionError:
        raise LoadError("permission denied") from None
    except OSError as err:
        raise LoadError(f"unreadable ({err.strerror or err})") from None
