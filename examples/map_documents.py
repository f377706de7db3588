"""One question mapped over several documents in parallel, then reduced; run with:

    agents run examples/map_documents.py:graph -q "How tall is the Eiffel Tower?"

``fan_out`` sends one branch per document of ``examples/docs`` (LangGraph ``Send``); LangGraph runs
the branches at once, and the model's scheduler (runtime/scheduler.py) batches their forward passes.
Each branch takes the sentence of its document closest to the question (cosine similarity of
all-MiniLM-L6-v2 embeddings) and has the model pick, under a ``Choice`` constraint, the part of it
(a clause) that answers: the answer is copied from the source, never written freely. ``reduce``
keeps the branch whose sentence is closest to the question and quotes it with its file.
"""

import operator
import re
from pathlib import Path
from typing import Annotated, TypedDict

from langchain_core.messages import AIMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.types import Send
from slmflow.runtime import load_model
from slmflow.runtime.constraints import Choice
from slmflow.runtime.embeddings import load_embedder
from slmflow.tools.rag.chunking import split_sentences
from slmflow.tools.rag.loaders import load_document

DOCS = Path(__file__).parent / "docs"


class Pick(TypedDict):
    path: str
    sentence: str
    score: float
    answer: str


class State(MessagesState):
    picks: Annotated[list[Pick], operator.add]


class Branch(TypedDict):
    question: str
    path: str


def fan_out(state: State) -> list[Send]:
    question = state["messages"][-1].content
    return [Send("read", Branch(question=question, path=str(p))) for p in sorted(DOCS.iterdir()) if p.is_file()]


def read(branch: Branch) -> dict:
    text = load_document(Path(branch["path"])).text
    sentences = list(dict.fromkeys(" ".join(text[a:b].split()) for a, b in split_sentences(text)))
    sentences = [s for s in sentences if len(s.split()) >= 4]  # headings are not answers
    if not sentences:
        return {"picks": []}
    embedder = load_embedder()
    scores = embedder.embed(sentences) @ embedder.embed_query(branch["question"])
    best = int(scores.argmax())
    sentence = sentences[best]
    clauses = [c.strip(" .") for c in re.split(r"[,;:]\s+", sentence) if len(c.split()) >= 2]
    answer = sentence
    if len(clauses) > 1:
        prompt = f"Sentence: {sentence}\nQuestion: {branch['question']}\nThe part of the sentence that answers:"
        answer = load_model().generate(prompt, constraint=Choice(clauses)).text()
    return {"picks": [Pick(path=branch["path"], sentence=sentence, score=float(scores[best]), answer=answer)]}


def reduce(state: State) -> dict:
    picks = sorted(state["picks"], key=lambda p: -p["score"])
    if not picks:
        return {"messages": [AIMessage("None of the documents has text to answer from.")]}
    best = picks[0]
    others = "\n".join(f"  {Path(p['path']).name} ({p['score']:.2f}): {p['sentence']}" for p in picks[1:])
    text = (f"{best['answer']}\n\"{best['sentence']}\" ({Path(best['path']).name}, similarity {best['score']:.2f})"
            + (f"\nother documents' closest sentences:\n{others}" if others else ""))
    return {"messages": [AIMessage(text)]}


builder = StateGraph(State)
builder.add_node("read", read)
builder.add_node("reduce", reduce)
builder.add_conditional_edges(START, fan_out, ["read"])
builder.add_edge("read", "reduce")
builder.add_edge("reduce", END)
graph = builder.compile()
