// The lineage graph of the artifact page. It fetches the graph JSON and lays it out in layers, from the
// sources on the left to the consumers on the right. It draws SVG with pan (drag), zoom (wheel and buttons)
// and click-to-open. It uses no third-party library, because the page's Content-Security-Policy allows
// only this origin.
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const NODE_WIDTH = 170;
  const NODE_HEIGHT = 44;
  const LAYER_GAP = 90;
  const ROW_GAP = 22;
  const ORDERING_SWEEPS = 6;
  const MIN_FIT_SCALE = 0.7;

  function element(name, attributes, parent) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [key, value] of Object.entries(attributes || {})) {
      node.setAttribute(key, String(value));
    }
    if (parent) {
      parent.appendChild(node);
    }
    return node;
  }

  // Longest-path layering: a node sits one layer right of its rightmost predecessor. A cycle (an artifact
  // that is both input and output of one execution) stops the relaxation after as many rounds as nodes.
  function assignLayers(nodes, edges) {
    const layer = new Map(nodes.map((node) => [node.key, 0]));
    for (let round = 0; round < nodes.length; round += 1) {
      let changed = false;
      for (const edge of edges) {
        const candidate = layer.get(edge.source) + 1;
        if (candidate > layer.get(edge.target) && candidate < nodes.length) {
          layer.set(edge.target, candidate);
          changed = true;
        }
      }
      if (!changed) {
        break;
      }
    }
    return layer;
  }

  // Orders the nodes of each layer by the mean position of their neighbours (the barycenter heuristic),
  // sweeping right then left, which removes most edge crossings of a lineage graph.
  function orderLayers(nodes, edges, layer) {
    const layers = [];
    for (const node of nodes) {
      const index = layer.get(node.key);
      (layers[index] = layers[index] || []).push(node.key);
    }
    const predecessors = new Map(nodes.map((node) => [node.key, []]));
    const successors = new Map(nodes.map((node) => [node.key, []]));
    for (const edge of edges) {
      successors.get(edge.source).push(edge.target);
      predecessors.get(edge.target).push(edge.source);
    }
    const position = new Map();
    const remember = (keys) => keys.forEach((key, index) => position.set(key, index));
    layers.forEach((keys) => remember(keys || []));

    const sortBy = (keys, neighbours) => {
      const weight = new Map(keys.map((key, index) => {
        const known = neighbours.get(key).filter((other) => position.has(other));
        const mean = known.length ? known.reduce((sum, other) => sum + position.get(other), 0) / known.length : index;
        return [key, mean];
      }));
      keys.sort((first, second) => weight.get(first) - weight.get(second));
      remember(keys);
    };
    for (let sweep = 0; sweep < ORDERING_SWEEPS; sweep += 1) {
      if (sweep % 2 === 0) {
        for (let index = 1; index < layers.length; index += 1) {
          if (layers[index]) sortBy(layers[index], predecessors);
        }
      } else {
        for (let index = layers.length - 2; index >= 0; index -= 1) {
          if (layers[index]) sortBy(layers[index], successors);
        }
      }
    }
    return layers.map((keys) => keys || []);
  }

  function layout(graph) {
    const layer = assignLayers(graph.nodes, graph.edges);
    const layers = orderLayers(graph.nodes, graph.edges, layer);
    const tallest = Math.max(...layers.map((keys) => keys.length), 1);
    const points = new Map();
    layers.forEach((keys, layerIndex) => {
      const offset = ((tallest - keys.length) * (NODE_HEIGHT + ROW_GAP)) / 2;
      keys.forEach((key, row) => {
        points.set(key, { x: layerIndex * (NODE_WIDTH + LAYER_GAP), y: offset + row * (NODE_HEIGHT + ROW_GAP) });
      });
    });
    return points;
  }

  function truncate(text, length) {
    return text.length > length ? text.slice(0, length - 1) + "…" : text;
  }

  function draw(svg, graph) {
    const points = layout(graph);
    while (svg.firstChild) {
      svg.removeChild(svg.firstChild);
    }
    const defs = element("defs", {}, svg);
    const marker = element("marker", {
      id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto",
    }, defs);
    element("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrow-head" }, marker);
    const viewport = element("g", { class: "viewport" }, svg);
    const edgeLayer = element("g", { class: "edges" }, viewport);
    const nodeLayer = element("g", { class: "nodes" }, viewport);

    for (const edge of graph.edges) {
      const from = points.get(edge.source);
      const to = points.get(edge.target);
      if (!from || !to) continue;
      const x1 = from.x + NODE_WIDTH;
      const y1 = from.y + NODE_HEIGHT / 2;
      const x2 = to.x;
      const y2 = to.y + NODE_HEIGHT / 2;
      const bend = Math.max(40, Math.abs(x2 - x1) / 2);
      element("path", {
        class: "edge edge-" + edge.type.toLowerCase(),
        d: `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`,
        "marker-end": "url(#arrow)",
        "data-source": edge.source,
        "data-target": edge.target,
      }, edgeLayer);
    }

    for (const node of graph.nodes) {
      const point = points.get(node.key);
      const classes = ["node", node.kind, "type-" + String(node.type || "").replace(/[^A-Za-z0-9_-]/g, "_")];
      if (node.state) classes.push("state-" + node.state.toLowerCase());
      if (node.focus) classes.push("focus");
      const group = element("g", {
        class: classes.join(" "),
        transform: `translate(${point.x}, ${point.y})`,
        "data-kind": node.kind,
        "data-id": node.id,
        "data-url": node.url,
        tabindex: 0,
        role: "link",
      }, nodeLayer);
      const radius = node.kind === "execution" ? 4 : 14;
      element("rect", { width: NODE_WIDTH, height: NODE_HEIGHT, rx: radius, ry: radius }, group);
      const label = element("text", { x: 10, y: 18, class: "label" }, group);
      label.textContent = truncate(node.label, 24);
      const detail = element("text", { x: 10, y: 34, class: "detail" }, group);
      detail.textContent = truncate(node.detail, 28);
      const title = element("title", {}, group);
      title.textContent = `${node.kind} ${node.id}: ${node.type} ${node.label}`;
    }
    return viewport;
  }

  function interactive(svg, viewport) {
    const view = { x: 20, y: 20, scale: 1 };
    let drag = null;
    let moved = false;

    const apply = () => viewport.setAttribute("transform", `translate(${view.x}, ${view.y}) scale(${view.scale})`);
    const zoomAt = (factor, cx, cy) => {
      const scale = Math.min(4, Math.max(0.1, view.scale * factor));
      view.x = cx - ((cx - view.x) * scale) / view.scale;
      view.y = cy - ((cy - view.y) * scale) / view.scale;
      view.scale = scale;
      apply();
    };
    // The first view keeps labels readable (centred on the focus node); the Fit button shows the whole graph.
    const fit = (minimum) => {
      const box = viewport.getBBox();
      const width = svg.clientWidth || 800;
      const height = svg.clientHeight || 500;
      if (!box.width || !box.height) {
        view.x = 20; view.y = 20; view.scale = 1;
      } else {
        const whole = Math.min((width - 40) / box.width, (height - 40) / box.height);
        // Below this scale the labels cannot be read: a graph too large for the frame is shown at this
        // scale, centred on the focus node, and the rest is reached by panning.
        view.scale = Math.min(1.5, Math.max(minimum, whole));
        let centreX = box.x + box.width / 2;
        let centreY = box.y + box.height / 2;
        const focus = viewport.querySelector(".node.focus");
        if (whole < minimum && focus) {
          const focusBox = focus.getBBox();
          const at = focus.transform.baseVal.consolidate().matrix;
          centreX = at.e + focusBox.width / 2;
          centreY = at.f + focusBox.height / 2;
        }
        view.x = width / 2 - centreX * view.scale;
        view.y = height / 2 - centreY * view.scale;
      }
      apply();
    };

    svg.addEventListener("pointerdown", (event) => {
      drag = { x: event.clientX, y: event.clientY, startX: view.x, startY: view.y };
      moved = false;
    });
    svg.addEventListener("pointermove", (event) => {
      if (!drag) return;
      const dx = event.clientX - drag.x;
      const dy = event.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 4) {
        moved = true;
        svg.classList.add("dragging");
      }
      if (moved) {
        view.x = drag.startX + dx;
        view.y = drag.startY + dy;
        apply();
      }
    });
    const stop = () => {
      drag = null;
      svg.classList.remove("dragging");
    };
    svg.addEventListener("pointerup", stop);
    svg.addEventListener("pointerleave", stop);
    svg.addEventListener("wheel", (event) => {
      event.preventDefault();
      const box = svg.getBoundingClientRect();
      zoomAt(event.deltaY < 0 ? 1.15 : 1 / 1.15, event.clientX - box.left, event.clientY - box.top);
    }, { passive: false });

    const open = (target) => {
      const node = target.closest("g.node");
      if (node) window.location.assign(node.getAttribute("data-url"));
    };
    svg.addEventListener("click", (event) => {
      if (!moved) open(event.target);
    });
    svg.addEventListener("keydown", (event) => {
      if (event.key === "Enter") open(event.target);
    });

    const center = () => [(svg.clientWidth || 800) / 2, (svg.clientHeight || 500) / 2];
    document.getElementById("zoom-in").addEventListener("click", () => zoomAt(1.25, ...center()));
    document.getElementById("zoom-out").addEventListener("click", () => zoomAt(1 / 1.25, ...center()));
    document.getElementById("zoom-reset").addEventListener("click", () => fit(0.05));
    fit(MIN_FIT_SCALE);
  }

  async function start() {
    const svg = document.getElementById("lineage-graph");
    if (!svg) return;
    const status = document.getElementById("graph-status");
    try {
      const response = await fetch(svg.getAttribute("data-graph-url"), { credentials: "same-origin" });
      if (!response.ok) {
        throw new Error(`the server returned ${response.status} for the graph`);
      }
      const graph = await response.json();
      const viewport = draw(svg, graph);
      interactive(svg, viewport);
      const counts = `${graph.nodes.length} nodes, ${graph.edges.length} edges`;
      status.textContent = graph.truncated ? `${counts}; truncated: lower the depth or open a node` : counts;
      svg.setAttribute("data-node-count", String(graph.nodes.length));
      svg.setAttribute("data-truncated", String(graph.truncated));
    } catch (error) {
      status.textContent = `The graph could not be drawn: ${error.message}`;
      svg.setAttribute("data-error", error.message);
    }
    svg.setAttribute("data-ready", "true");
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
