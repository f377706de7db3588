"""The docs-qa graph: retrieve → answer, over one folder's index.

The same steps as :class:`~slmflow.agents.docs_qa.DocsQA` (which the CLI's ``agents run docs-qa``
uses directly), as LangGraph nodes, so the pipeline can be checkpointed, streamed, or embedded in a
larger graph. The answer message carries its quoted evidence and its location after the text.
"""

from __future__ import annotations

import operator
import time
from typing import Annotated

from langchain_core.messages import AIMessage
from langgraph.graph import END, START, MessagesState, StateGraph
from slmflow.agents.docs_qa import DocsQA


class DocsQAState(MessagesState, total=False):
    hits: list
    retrieval_ms: float
    trace: Annotated[list[dict], operator.add]


def build_docs_qa_graph(qa: DocsQA, checkpointer=None):
    def question(state: DocsQAState) -> str:
        return next(m.content for m in reversed(state["messages"]) if m.type == "human")

    def retrieve(state: DocsQAState) -> dict:
        start = time.perf_counter()
        hits = qa.retriever.search(question(state), k=qa.k)
        ms = (time.perf_counter() - start) * 1000
        return {"hits": hits, "retrieval_ms": ms,
                "trace": [{"node": "retrieve", "ms": round(ms, 1), "note": f"{len(hits)} chunks"}]}

    def answer(state: DocsQAState) -> dict:
        result = qa.answer(question(state), state["hits"], state["retrieval_ms"])
        return {"messages": [AIMessage(content=result.render())],
                "trace": [{"node": "answer", "model": str(qa.model.spec), "tokens": result.completion_tokens,
                           "ms": round(result.generation_ms, 1), "note": f"{len(result.cited)} cited"}]}

    builder = StateGraph(DocsQAState)
    builder.add_node("retrieve", retrieve)
    builder.add_node("answer", answer)
    builder.add_edge(START, "retrieve")
    builder.add_edge("retrieve", "answer")
    builder.add_edge("answer", END)
    return builder.compile(checkpointer=checkpointer)
