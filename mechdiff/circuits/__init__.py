"""Circuits in one model and across a base and its fine-tune: edge attribution (EAP, EAP-IG),
faithfulness by real edge ablation, circuit comparison and a verdict.

The graph (:mod:`.graph`) follows EAP-IG (Hanna, Pezzelle & Belinkov 2024, "Have Faith in
Faithfulness: Going Beyond Circuit Overlap When Finding Model Mechanisms"): nodes are the input,
every attention head, every MLP and the logits; every head has its own query input and every
*key-value head* its own key and value inputs (grouped-query attention natively). Edge scores are
EAP (Syed, Rager & Conmy 2023, "Attribution Patching Outperforms Automated Circuit Discovery") or
EAP-IG; circuits are top-n / threshold / greedy and pruned; faithfulness is MIB's normalized
faithfulness with CPR and CMD (Mueller et al. 2025, "MIB: A Mechanistic Interpretability
Benchmark"), by intervention. Across models: each edge's share of the fine-tuned-vs-base gap by
edge-level cross-model patching; the two models' circuits compared, each evaluated inside the
other model (Prakash et al. 2024, "Fine-Tuning Enhances Existing Mechanisms: A Case Study on Entity
Tracking"; Wang et al. 2025), and a verdict: "re-used and strengthened", "new mechanism",
"mixed", or "undetermined" when a number it rests on is not defined.

A first analysis::

    import mechdiff
    from mechdiff import circuits

    pair = mechdiff.load_pair("base_dir", "finetuned_dir")
    task = mechdiff.Task.from_file("prompts.jsonl")
    scores = circuits.edge_attribution(pair.finetuned, task)           # every edge, EAP-IG
    print(circuits.faithfulness_curve(pair.finetuned, task, scores).table())
    comparison = circuits.compare_circuits(pair, task)                  # both models + verdict
    print(comparison.summary())

Modules: :mod:`.graph` (nodes, edges, exactness checks), :mod:`.ablation` (corrupted and mean
ablation), :mod:`.attribution` (EAP, EAP-IG), :mod:`.circuit` (selection, pruning),
:mod:`.faithfulness` (intervention, curves, CPR/CMD), :mod:`.cross` (edges across models),
:mod:`.compare` (two circuits), :mod:`.verdict` (rules, thresholds, bootstrap).
"""

from mechdiff.circuits.ablation import ABLATIONS, Ablation
from mechdiff.circuits.attribution import METHODS, EdgeScores, Method, edge_attribution
from mechdiff.circuits.circuit import RULES, Circuit, Rule, prune_edges, select_circuit
from mechdiff.circuits.compare import CircuitComparison, compare_circuits
from mechdiff.circuits.cross import CrossEdgeScores, cross_edge_attribution
from mechdiff.circuits.faithfulness import (
    MIB_FRACTIONS,
    Faithfulness,
    FaithfulnessCurve,
    faithfulness,
    faithfulness_curve,
)
from mechdiff.circuits.graph import Graph, GraphError, graph_of
from mechdiff.circuits.results import RankedEdge
from mechdiff.circuits.verdict import THRESHOLDS, Verdict, decide

__all__ = [
    "ABLATIONS",
    "METHODS",
    "MIB_FRACTIONS",
    "RULES",
    "THRESHOLDS",
    "Ablation",
    "Circuit",
    "CircuitComparison",
    "CrossEdgeScores",
    "EdgeScores",
    "Faithfulness",
    "FaithfulnessCurve",
    "Graph",
    "GraphError",
    "Method",
    "RankedEdge",
    "Rule",
    "Verdict",
    "compare_circuits",
    "cross_edge_attribution",
    "decide",
    "edge_attribution",
    "faithfulness",
    "faithfulness_curve",
    "graph_of",
    "prune_edges",
    "select_circuit",
]
