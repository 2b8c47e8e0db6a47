"""The source and target versions' steps side by side as a server-drawn SVG (no JavaScript): each
step a box with its in-flight count, an arrow per step mapping carrying the source step's count.
This module only places things; templates/dashboard/_step_graph.html draws them."""

from __future__ import annotations

from workflows_admin.workflows.wizard_selectors import StepGraph

NODE_W, NODE_H, GAP, TOP, GUTTER = 180, 44, 14, 26, 150
NOTES = {"removed": "not on the target", "unmapped": "unmapped: no such step", "added": "new on the target"}


def _column(nodes, x: int) -> list[dict]:
    return [
        {
            "name": node.name,
            "in_flight": node.in_flight,
            "kind": node.kind,
            "note": NOTES.get(node.kind, ""),
            "x": x,
            "y": TOP + index * (NODE_H + GAP),
            "cx": x + NODE_W // 2,
        }
        for index, node in enumerate(nodes)
    ]


def layout(graph: StepGraph) -> dict:
    """Boxes, arrows (SVG path data) and the canvas size for the template."""
    source = _column(graph.source_steps, 1)
    target = _column(graph.target_steps, 1 + NODE_W + GUTTER) if graph.target else []
    by_name = {"source": {box["name"]: box for box in source}, "target": {box["name"]: box for box in target}}
    arrows = []
    for from_step, to_step, count, overridden in graph.arrows:
        start, end = by_name["source"][from_step], by_name["target"][to_step]
        x1, y1 = start["x"] + NODE_W, start["y"] + NODE_H // 2
        x2, y2 = end["x"] - 6, end["y"] + NODE_H // 2
        middle = (x1 + x2) // 2
        arrows.append(
            {
                "from": from_step,
                "to": to_step,
                "count": count,
                "overridden": overridden,
                "path": f"M{x1},{y1} C{middle},{y1} {middle},{y2} {x2},{y2}",
                "label_x": middle,
                "label_y": (y1 + y2) // 2 - 4,
            }
        )
    rows = max(len(source), len(target), 1)
    return {
        "source_label": graph.source.version,
        "target_label": graph.target.version if graph.target else "",
        "columns": [("source", source), ("target", target)],
        "arrows": arrows,
        "width": 2 + NODE_W * (2 if graph.target else 1) + (GUTTER if graph.target else 0),
        "height": TOP + rows * (NODE_H + GAP),
        "node_w": NODE_W,
        "node_h": NODE_H,
        "target_x": 1 + NODE_W + GUTTER,
        "unmapped": sum(node.in_flight for node in graph.source_steps if node.kind == "unmapped"),
    }
