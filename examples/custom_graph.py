"""A custom LangGraph graph on local models, run with:

    agents run examples/custom_graph.py:graph -q "Paris is lovely in spring."

Two nodes share one loaded model (and its prefix cache): one classifies the message's mood under a
constrained choice, the other replies in that mood.
"""

from langgraph.graph import END, START, MessagesState, StateGraph
from slmflow.agents.chat_model import SlmflowChatModel
from slmflow.runtime import load_model
from slmflow.runtime.constraints import Choice


class State(MessagesState):
    mood: str


def classify(state: State) -> dict:
    text = state["messages"][-1].content
    mood = load_model().generate(f"Is this message happy, sad or neutral?\n{text}",
                                 constraint=Choice(["happy", "sad", "neutral"])).text()
    return {"mood": mood}


def reply(state: State) -> dict:
    llm = SlmflowChatModel(max_tokens=80)
    return {"messages": [llm.invoke([("system", f"Reply in one {state['mood']} sentence."),
                                     *state["messages"]])]}


builder = StateGraph(State)
builder.add_node("classify", classify)
builder.add_node("reply", reply)
builder.add_edge(START, "classify")
builder.add_edge("classify", "reply")
builder.add_edge("reply", END)
graph = builder.compile()
