"""Fit the docs-qa answer's two decisions on the *fit* half of wikiqa dev, and print the constants.

* Abstention (agents/docs_qa.py ``ABSTAIN_*``): a logistic regression over the best evidence
  sentence's coverage and similarity, answerable questions against the same questions with their
  articles left out of retrieval; the threshold is the largest at which at most
  ``--answerable-abstain`` of the answerable fit questions abstain. The rate on the left-out
  questions is printed at that threshold.
* Yes/No: a logistic regression over agents/polar.py's features (``WEIGHTS``, ``BIAS``) and the
  probability threshold (``YES_THRESHOLD``) that maximises the mean of accuracy and balanced
  accuracy on the fit half.

The constants are then written into the code by hand; ``agents eval docs-qa-wikiqa --half report``
reports them on the other half. Features are cached in ``--cache`` (one JSON line per question).

    python bench/fit_docs_qa.py [--cache evals-out/fit-features.jsonl]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
from slmflow.evals.docs_qa import ANSWER_CHUNKS, WikiQASuite, said_yes_no
from slmflow.runtime import load_model


def features(suite: WikiQASuite, qa, row: dict) -> dict:
    """What the two decisions see for one question: the best sentence's coverage with and without
    the gold articles in the index, and the polar features."""
    question = row["question"]
    hits = qa.retriever.search(question, k=ANSWER_CHUNKS)
    evidence = qa.retriever.evidence(question, hits)
    removed = qa.retriever.evidence(question, qa.retriever.search(
        question, k=ANSWER_CHUNKS, where={"path": {"$nin": suite.gold_paths(row)}}))
    out = {"id": row["id"], "polar": row["is_yes_no"], "coverage": evidence[0].coverage if evidence else 0.0,
           "similarity": evidence[0].similarity if evidence else 0.0,
           "removed_coverage": removed[0].coverage if removed else 0.0,
           "removed_similarity": removed[0].similarity if removed else 0.0}
    if row["is_yes_no"] and evidence:
        out["yes"] = said_yes_no(row["answers"][0]) == "yes"
        out["features"] = asdict(qa.polar_features(question, evidence[0]))
        out["evidence"] = evidence[0].text
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1.0, steps: int = 50) -> tuple[np.ndarray, float]:
    """Newton's method on the L2-penalised log-loss (the bias unpenalised)."""
    design = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(design.shape[1])
    penalty = np.full(design.shape[1], l2)
    penalty[-1] = 0.0
    for _ in range(steps):
        p = 1 / (1 + np.exp(-design @ w))
        grad = design.T @ (p - y) + penalty * w
        hess = (design * (p * (1 - p))[:, None]).T @ design + np.diag(penalty)
        w -= np.linalg.solve(hess, grad)
    return w[:-1], float(w[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path("evals-out/fit-features.jsonl"))
    parser.add_argument("--answerable-abstain", type=float, default=0.08)
    args = parser.parse_args()
    suite = WikiQASuite(half="fit")
    rows = [item.data for item in suite.items(None)]
    done = {}
    if args.cache.exists():
        done = {r["id"]: r for r in map(json.loads, args.cache.read_text().splitlines())}
    args.cache.parent.mkdir(parents=True, exist_ok=True)
    todo = [r for r in rows if r["id"] not in done]
    if todo:
        qa = suite.qa(load_model(None))
        with args.cache.open("a", encoding="utf-8") as f:
            for n, row in enumerate(todo, 1):
                done[row["id"]] = features(suite, qa, row)
                f.write(json.dumps(done[row["id"]]) + "\n")
                if n % 50 == 0:
                    print(f"{n}/{len(todo)} questions", flush=True)
    found = [done[r["id"]] for r in rows]

    answerable = np.array([[f["coverage"], f["similarity"]] for f in found])
    removed = np.array([[f["removed_coverage"], f["removed_similarity"]] for f in found])
    weights, bias = fit_logistic(np.vstack([answerable, removed]),
                                 np.r_[np.ones(len(answerable)), np.zeros(len(removed))])
    p_answerable = 1 / (1 + np.exp(-(answerable @ weights + bias)))
    p_removed = 1 / (1 + np.exp(-(removed @ weights + bias)))
    threshold = max(t for t in np.unique(p_answerable) if np.mean(p_answerable < t) <= args.answerable_abstain)
    print(json.dumps({"ABSTAIN_WEIGHTS": {"coverage": round(float(weights[0]), 3),
                                          "similarity": round(float(weights[1]), 3)},
                      "ABSTAIN_BIAS": round(bias, 3), "ABSTAIN_BELOW": round(float(threshold), 3),
                      "questions": len(found),
                      "answerable_abstain": round(float(np.mean(p_answerable < threshold)), 3),
                      "removed_abstain": round(float(np.mean(p_removed < threshold)), 3)}))

    polar = [f for f in found if "features" in f]
    names = list(polar[0]["features"])
    x = np.array([[f["features"][n] for n in names] for f in polar])
    y = np.array([float(f["yes"]) for f in polar])
    weights, bias = fit_logistic(x, y)
    p = 1 / (1 + np.exp(-(x @ weights + bias)))

    def scores(t: float) -> tuple[float, float]:
        said = p >= t
        accuracy = float(np.mean(said == (y == 1)))
        balanced = (float(np.mean(said[y == 1])) + float(np.mean(~said[y == 0]))) / 2
        return accuracy, balanced

    best = max(np.linspace(0.3, 0.95, 66), key=lambda t: sum(scores(t)))
    accuracy, balanced = scores(best)
    print(json.dumps({"WEIGHTS": {n: round(float(w), 3) for n, w in zip(names, weights, strict=True)},
                      "BIAS": round(bias, 3), "YES_THRESHOLD": round(float(best), 2), "polar": len(polar),
                      "yes_share": round(float(y.mean()), 3), "fit_accuracy": round(accuracy, 3),
                      "fit_balanced_accuracy": round(balanced, 3)}))


if __name__ == "__main__":
    main()
