"""Local RAG: loading, chunking, the incremental crash-safe index, hybrid retrieval and docs-qa.

Every test uses the real embedder (all-MiniLM-L6-v2 from its wheel), real Chroma and bm25s, and
the real embedded model where an answer is generated.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont
from slmflow.agents.docs_qa import NOT_FOUND, DocsQA, answer_constraint
from slmflow.runtime.embeddings import Embedder, load_embedder
from slmflow.tools.rag.chunking import chunk_document
from slmflow.tools.rag.index import INDEX_META, DocumentIndex, IndexUnusableError
from slmflow.tools.rag.loaders import LoadError, load_document
from slmflow.tools.rag.retrieval import Retriever

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "docs"


def text_pdf(pages: list[str]) -> bytes:
    """A minimal PDF with a text layer, one line of Helvetica per page."""
    return placed_text_pdf([[(72, 720, text)] for text in pages])


def placed_text_pdf(pages: list[list[tuple[int, int, str]]]) -> bytes:
    """A minimal PDF whose pages draw each (x, y, text) in Helvetica, in the order given (a
    generator that writes a table column by column puts its cells out of reading order)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", None, "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    kids = []
    for lines in pages:
        stream = " ".join(f"BT /F1 11 Tf {x} {y} Td ({text}) Tj ET" for x, y, text in lines).encode()
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {len(objects)} 0 R "
                       "/Resources << /Font << /F1 3 0 R >> >> >>")
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out, offsets = b"%PDF-1.4\n", []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{o:010d} 00000 n \n" for o in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return out


def text_image(text: str) -> Image.Image:
    image = Image.new("RGB", (900, 120), "white")
    ImageDraw.Draw(image).text((20, 35), text, fill="black", font=ImageFont.load_default(size=36))
    return image


@pytest.fixture(scope="module")
def embedder():
    return load_embedder()


@pytest.fixture
def folder(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in os.listdir(EXAMPLES):
        (docs / name).write_bytes((EXAMPLES / name).read_bytes())
    return docs


# --- loading and chunking --------------------------------------------------------------------------

def test_markdown_sections_follow_headings():
    doc = load_document(EXAMPLES / "eiffel-tower.md")
    assert doc.title == "The Eiffel Tower"
    height = next(s for s in doc.sections if s.heading == "Height")
    assert "330 metres" in doc.text[height.start:height.end]


def test_html_keeps_headings_and_inline_text():
    doc = load_document(EXAMPLES / "honeybees.html")
    assert doc.title == "Honey bees"
    section = next(s for s in doc.sections if s.heading == "Communication")
    assert "performs a waggle dance in the hive" in doc.text[section.start:section.end]


def test_pdf_text_is_read_per_page(tmp_path):
    path = tmp_path / "report.pdf"
    path.write_bytes(text_pdf(["Revenue grew in spring", "Costs fell in autumn"]))
    doc = load_document(path)
    assert [s.page for s in doc.sections] == [1, 2]
    assert "Costs fell in autumn" in doc.text[doc.sections[1].start:doc.sections[1].end]


def test_aes_encrypted_pdf_that_opens_without_a_password_is_indexed(tmp_path):
    from pypdf import PdfReader, PdfWriter

    plain = tmp_path / "plain.pdf"
    plain.write_bytes(text_pdf(["Dividends were paid in March"]))
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt(user_password="", owner_password="owner-secret", algorithm="AES-256")
    folder = tmp_path / "filings"
    folder.mkdir()
    with (folder / "locked.pdf").open("wb") as f:
        writer.write(f)
    stats = DocumentIndex(folder, tmp_path / "index").update()
    assert stats.files_embedded == 1 and not stats.warnings
    assert any("Dividends were paid in March" in c.text for c in DocumentIndex(folder, tmp_path / "index").all_chunks())


def test_table_written_column_by_column_reads_row_by_row(tmp_path):
    rows = [("Item", "2023", "2022"), ("Revenue", "$11,588.00", "$9,020.00"), ("Net income", "$2,150.00", "$1,870.00")]
    cells = [(72 + 160 * c, 600 - 20 * r, rows[r][c]) for c in range(3) for r in range(3)]
    path = tmp_path / "table.pdf"
    path.write_bytes(placed_text_pdf([[(72, 700, "Results of operations.")] + cells]))
    lines = load_document(path).text.splitlines()
    assert "Revenue $11,588.00 $9,020.00" in lines and "Net income $2,150.00 $1,870.00" in lines


def test_chunks_of_a_pdf_never_span_two_pages(tmp_path, embedder):
    from slmflow.tools.rag.chunking import chunk_document

    path = tmp_path / "short-pages.pdf"
    path.write_bytes(text_pdf([f"Fact number {n} is on page {n}." for n in range(1, 6)]))
    doc = load_document(path)
    chunks = chunk_document(doc, embedder.tokenizer)
    assert [c.page for c in chunks] == [1, 2, 3, 4, 5]
    assert all(f"page {c.page}." in c.text for c in chunks)


@pytest.mark.slow  # loads the OCR models
def test_scanned_pdf_page_goes_through_ocr(tmp_path):
    from slmflow.tools.rag.ocr import ocr_image

    path = tmp_path / "scan.pdf"
    text_image("Quarterly invoice paid in full").save(path, "PDF")
    doc = load_document(path, ocr=ocr_image)
    assert "Quarterly invoice paid in full" in doc.text
    assert doc.sections[0].page == 1


def test_image_is_read_by_ocr(tmp_path):
    from slmflow.tools.rag.ocr import ocr_image

    path = tmp_path / "note.png"
    text_image("Meeting moved to Friday").save(path)
    assert "Meeting moved to Friday" in load_document(path, ocr=ocr_image).text


def test_docx_headings_become_sections(tmp_path):
    import docx

    document = docx.Document()
    document.add_heading("Budget", level=1)
    document.add_paragraph("The budget for 2026 is 1.2 million.")
    path = tmp_path / "plan.docx"
    document.save(path)
    doc = load_document(path)
    assert doc.sections[0].heading == "Budget"
    assert "1.2 million" in doc.text


def test_binary_file_is_refused_with_the_reason(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"\x00\x01binary\x00")
    with pytest.raises(LoadError, match="binary"):
        load_document(path)


def test_legacy_encoded_text_is_read_with_a_note(tmp_path):
    path = tmp_path / "old.txt"
    path.write_bytes("Caf\u00e9 cr\u00e8me \u2014 1998".encode("cp1252"))
    doc = load_document(path)
    assert doc.text == "Caf\u00e9 cr\u00e8me \u2014 1998"
    assert doc.notes == ["not UTF-8 (byte 3); read as Windows-1252 — save it as UTF-8 if characters look wrong"]


def test_chunks_fit_the_embedder_and_overlap(embedder):
    doc = load_document(EXAMPLES / "eiffel-tower.md")
    long_doc = doc.model_copy(update={"text": doc.text, "sections": doc.sections})
    # The overlap carries whole sentences; this file's are 17-25 tokens long, so 24 carries one.
    chunks = chunk_document(long_doc, embedder.tokenizer, max_tokens=40, overlap=24)
    assert len(chunks) > 3
    assert all(embedder.count_tokens(c.text) <= 40 + 2 for c in chunks)
    assert all(doc.text[c.start:c.end] == c.text for c in chunks)
    same_heading = [(a, b) for a, b in zip(chunks, chunks[1:], strict=False) if a.heading == b.heading]
    assert same_heading and all(b.start < a.end for a, b in same_heading)  # consecutive chunks overlap


# --- the index ---------------------------------------------------------------------------------------

@pytest.fixture(params=["folder", "server"])
def store(request, tmp_path):
    """Where an index lives: a local folder, or a Chroma server (``--index-url``)."""
    if request.param == "folder":
        return {"index_dir": tmp_path / "index"}
    return {"index_url": request.getfixturevalue("chroma_url")}


def _store_args(store: dict) -> list[str]:
    return ["--index", str(store["index_dir"])] if "index_dir" in store else ["--index-url", store["index_url"]]


def test_reindexing_embeds_only_what_changed(folder, store):
    index = DocumentIndex(folder, **store)
    first = index.update()
    assert first.files_embedded == 3 and first.chunks_total == first.chunks_added > 0
    again = index.update()
    assert (again.files_embedded, again.chunks_added, again.files_unchanged) == (0, 0, 3)
    (folder / "coffee.txt").write_text("Coffee\n\nTea is grown in India and China.\n", encoding="utf-8")
    changed = index.update()
    assert (changed.files_embedded, changed.files_unchanged) == (1, 2)
    assert not any("Brazil" in c.text for c in index.all_chunks())
    (folder / "honeybees.html").unlink()
    removed = index.update()
    assert removed.files_removed == 1
    assert {c.path for c in index.all_chunks()} == {"coffee.txt", "eiffel-tower.md"}


def test_bad_files_are_skipped_by_name_and_the_rest_indexed(folder, tmp_path):
    (folder / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (folder / "blank-scan.pdf").write_bytes(b"")
    Image.new("RGB", (200, 200), "white").save(folder / "blank-scan.pdf", "PDF")
    (folder / "huge.log").touch()
    os.truncate(folder / "huge.log", 200_000_000)
    (folder / "gone.md").symlink_to(folder / "missing-target.md")
    stats = DocumentIndex(folder, tmp_path / "index").update()
    warnings = "\n".join(stats.warnings)
    assert "latin1.txt: not UTF-8 (byte 3); read as Windows-1252" in "\n".join(stats.notes)
    assert "blank-scan.pdf: PDF has no text layer" in warnings
    assert "huge.log: 200 MB is over the 50 MB limit" in warnings
    assert "gone.md: unreadable" in warnings
    assert stats.files_embedded == 4
    assert {c.path for c in DocumentIndex(folder, tmp_path / "index").all_chunks()} == {
        "coffee.txt", "eiffel-tower.md", "honeybees.html", "latin1.txt"}


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(IndexUnusableError, match="nowhere.*does not exist"):
        DocumentIndex(tmp_path / "nowhere", tmp_path / "index")


def test_index_built_with_other_settings_is_not_mixed(folder, store):
    DocumentIndex(folder, **store).update()
    with pytest.raises(IndexUnusableError, match="other chunk_tokens"):
        DocumentIndex(folder, **store, chunk_tokens=100)


def test_an_index_is_reused_by_another_install_of_its_embedder_and_re_embedded_by_another_model(
        folder, tmp_path, embedder):
    index_dir = tmp_path / "index"
    first = DocumentIndex(folder, index_dir, embedder=embedder).update()
    reinstalled = tmp_path / "other-venv" / "model"  # the same wheel in another virtual environment
    shutil.copytree(embedder.path, reinstalled)
    again = DocumentIndex(folder, index_dir, embedder=Embedder(reinstalled, precision=embedder.precision)).update()
    assert (again.files_embedded, again.files_unchanged) == (0, 3)

    other = tmp_path / "tuned" / "model"  # same name and shapes, other weights
    shutil.copytree(embedder.path, other)
    with (other / "model.safetensors").open("r+b") as weights:
        weights.seek(-64, os.SEEK_END)
        weights.write(bytes(64))
    tuned = DocumentIndex(folder, index_dir, embedder=Embedder(other, precision=embedder.precision))
    redone = tuned.update()  # its vectors replace the old ones, none are mixed
    assert (redone.files_embedded, redone.files_unchanged) == (3, 0) and tuned.count() == first.chunks_added
    assert json.loads((index_dir / INDEX_META).read_text())["embedder"] == tuned.settings.embedder


def test_an_index_of_the_embedders_install_path_is_reused_and_a_vanished_one_re_embedded(folder, tmp_path):
    fp32 = Embedder(load_embedder().path, precision="fp32")  # indexes before fingerprints were all float32
    index_dir = tmp_path / "index"
    DocumentIndex(folder, index_dir, embedder=fp32).update()
    meta = index_dir / INDEX_META  # as written before fingerprints: the embedder's install path
    settings = json.loads(meta.read_text())
    meta.write_text(json.dumps({**settings, "embedder": str(fp32.path)}))
    assert DocumentIndex(folder, index_dir, embedder=fp32).update().files_unchanged == 3
    meta.write_text(json.dumps({**settings, "embedder": str(tmp_path / "deleted-venv" / "model")}))
    assert DocumentIndex(folder, index_dir, embedder=fp32).update().files_embedded == 3  # nothing to compare


def test_another_precision_re_embeds_and_answers_alike(folder, tmp_path):
    path = load_embedder().path
    index_dir = tmp_path / "index"
    fp32 = DocumentIndex(folder, index_dir, embedder=Embedder(path, precision="fp32"))
    fp32.update()
    top = [h.chunk.id for h in Retriever(fp32).search("How tall is the tower?", k=3)]
    bf16 = DocumentIndex(folder, index_dir, embedder=Embedder(path, precision="bf16"))
    assert bf16.settings.embedder.endswith("+bf16") and bf16.update().files_embedded == 3
    assert [h.chunk.id for h in Retriever(bf16).search("How tall is the tower?", k=3)] == top


def test_absent_chroma_server_is_named_with_the_fix(folder):
    with pytest.raises(IndexUnusableError, match=r"no Chroma server answers at http://127.0.0.1:9 .*chroma run"):
        DocumentIndex(folder, index_url="http://127.0.0.1:9")


def _cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slmflow.cli", *args], capture_output=True, text=True,
                          timeout=600, **kwargs)


@pytest.mark.slow  # runs the CLI or the indexer in a subprocess
def test_empty_folder_gives_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    done = _cli("run", "docs-qa", str(tmp_path / "empty"), "--index", str(tmp_path / "index"), "-q", "anything")
    assert done.returncode == 2
    assert "no text could be indexed" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.slow  # runs the CLI or the indexer in a subprocess
def test_killed_indexer_leaves_a_usable_index_that_the_next_run_finishes(tmp_path, store):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(24):
        (corpus / f"note-{i:02d}.txt").write_text(
            f"Note {i}\n\n" + " ".join(f"Station {i} measured {j} millimetres of rain on day {j}." for j in range(180)),
            encoding="utf-8")
    proc = subprocess.Popen([sys.executable, "-m", "slmflow.cli", "-v", "index", str(corpus), *_store_args(store)],
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:  # the first stored batch, then kill it while it embeds the next
        if "stored" in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    partial = DocumentIndex(corpus, **store)
    stored = partial.file_records()
    assert 0 < len(stored) < 24
    hits = Retriever(partial).search("rain measured at a station", k=3)
    assert hits and all(h.chunk.path in stored for h in hits)

    complete = {rel for rel, r in stored.items() if r.get("stored", r["chunks"]) >= r["chunks"]}  # else partial
    finished = partial.update()
    assert finished.files_embedded == 24 - len(complete) and finished.files_unchanged == len(complete)
    records = partial.file_records()
    assert len(records) == 24 and partial.count() == sum(r["chunks"] for r in records.values())
    assert all(r["stored"] == r["chunks"] for r in records.values())
    assert len({c.id for c in partial.all_chunks()}) == partial.count()


# --- retrieval -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def example_retriever(tmp_path_factory):
    index = DocumentIndex(EXAMPLES, tmp_path_factory.mktemp("index"))
    index.update()
    return Retriever(index)


def test_hybrid_search_finds_the_section_with_the_answer(example_retriever):
    hits = example_retriever.search("How tall is the Eiffel Tower?", k=3)
    assert hits[0].chunk.path == "eiffel-tower.md" and "330 metres" in hits[0].chunk.text
    assert hits[0].dense_rank is not None and hits[0].bm25_rank is not None


def test_bm25_finds_a_rare_exact_term(example_retriever):
    hits = example_retriever.search("Kaldi", k=1, mode="bm25")
    assert hits[0].chunk.path == "coffee.txt"


def test_metadata_filter_limits_results(example_retriever):
    hits = example_retriever.search("How tall is the Eiffel Tower?", k=5, where={"path": "coffee.txt"})
    assert hits and {h.chunk.path for h in hits} == {"coffee.txt"}


# --- docs-qa -------------------------------------------------------------------------------------

def test_answer_constraint_allows_only_retrieved_citations(onnx_model):
    engine = onnx_model.constraints
    constraint = answer_constraint(2, polar=False)
    assert engine.accepts(constraint, "It is 330 metres tall [2].")
    assert not engine.accepts(constraint, "It is 330 metres tall [3].")
    assert not engine.accepts(constraint, "It is 330 metres tall.")
    assert engine.accepts(constraint, NOT_FOUND)


def test_docs_qa_answers_with_citations_of_retrieved_chunks(onnx_model, tmp_path):
    qa = DocsQA(EXAMPLES, onnx_model, index_dir=tmp_path / "index")
    qa.update_index()
    answer = qa.ask("How tall is the Eiffel Tower?")
    assert answer.found and answer.cited
    retrieved = {s.chunk_id for s in answer.sources}
    assert all(s.chunk_id in retrieved for s in answer.cited)
    assert answer.answer == "330 metres" and answer.kind == "number" and answer.verified
    assert answer.cited[0].path == "eiffel-tower.md"
    document = load_document(EXAMPLES / "eiffel-tower.md").text
    assert document[answer.evidence.start:answer.evidence.end] == answer.evidence.text
    assert document[answer.answer_start:answer.answer_end] == "330 metres"


def test_docs_qa_abstains_on_a_question_the_documents_cannot_answer(onnx_model, tmp_path):
    qa = DocsQA(EXAMPLES, onnx_model, index_dir=tmp_path / "index")
    qa.update_index()
    answer = qa.ask("Who won the 2018 FIFA World Cup?")
    assert (answer.answer, answer.found, answer.cited, answer.evidence) == (NOT_FOUND, False, [], None)


def test_docs_qa_cites_the_exact_page_of_a_long_pdf(onnx_model, tmp_path):
    folder = tmp_path / "filing"
    folder.mkdir()
    facts = {37: "The Lisbon warehouse was sold in 2019 for 4.2 million euros.",
             88: "The Oslo subsidiary employs 212 engineers."}
    pages = [facts.get(n, f"Page {n} lists routine operating expenses of segment {n}.") for n in range(1, 121)]
    (folder / "annual-report.pdf").write_bytes(text_pdf(pages))
    qa = DocsQA(folder, onnx_model, index_dir=tmp_path / "index")
    qa.update_index()
    for page, question in ((37, "When was the Lisbon warehouse sold?"), (88, "How many engineers does the Oslo "
                                                                            "subsidiary employ?")):
        answer = qa.ask(question)
        assert answer.evidence.page == page and answer.evidence.text == facts[page], answer
        assert f"page {page}, characters" in answer.render()
    assert qa.ask("When was the Lisbon warehouse sold?").answer == "2019"


@pytest.mark.slow  # runs the CLI or the indexer in a subprocess
def test_docs_qa_cli_json(tmp_path):
    done = _cli("run", "docs-qa", str(EXAMPLES), "--index", str(tmp_path / "index"), "--json",
                "-q", "Which country produces the most coffee?")
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["cited"] and {c["path"] for c in answer["cited"]} <= {s["path"] for s in answer["sources"]}
    assert answer["retrieval_ms"] > 0 and answer["generation_ms"] > 0


def test_docs_qa_graph_retrieves_then_answers_with_citations(onnx_model, tmp_path):
    from slmflow.graphs.docs_qa import build_docs_qa_graph

    qa = DocsQA(EXAMPLES, onnx_model, index_dir=tmp_path / "index")
    qa.update_index()
    out = build_docs_qa_graph(qa).invoke({"messages": [("user", "How tall is the Eiffel Tower?")]})
    assert [event["node"] for event in out["trace"]] == ["retrieve", "answer"]
    lines = out["messages"][-1].content.splitlines()
    assert lines[0] == "330 metres"
    assert re.fullmatch(r"  eiffel-tower\.md, § Height, characters \d+-\d+", lines[-1]), lines


def test_a_query_is_embedded_once_and_shared(embedder):
    text = "How tall is the Eiffel Tower? (query cache)"
    first = embedder.embed_query(text)
    assert embedder.embed_query(text) is first  # the router's signals and the answering node share it
    assert np.allclose(first, embedder.embed([text])[0], atol=1e-6)
    with pytest.raises(ValueError):
        first[0] = 0.0


def test_a_bad_embed_precision_setting_names_the_values_it_takes(monkeypatch):
    from slmflow.runtime.embeddings import embed_precision
    from slmflow.runtime.errors import ModelLoadError

    monkeypatch.setenv("SLMFLOW_EMBED_PRECISION", "fp16")
    with pytest.raises(ModelLoadError, match="'fp16' is neither fp32 nor bf16"):
        embed_precision()
    monkeypatch.setenv("SLMFLOW_EMBED_PRECISION", "fp32")
    assert embed_precision() == "fp32"
